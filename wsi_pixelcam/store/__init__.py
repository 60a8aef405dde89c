"""Zarr v3 stores: per-slide patch stores and (in heatmap_store) stitched heatmaps."""

from wsi_pixelcam.store.jpeg_codec import JpegCodec
from wsi_pixelcam.store.meta import PatchStoreMeta
from wsi_pixelcam.store.patch_store import (
    PatchStore,
    PatchStoreWriter,
    find_complete_store,
    is_patch_store,
    open_patch_store,
)

__all__ = [
    "JpegCodec",
    "PatchStore",
    "PatchStoreMeta",
    "PatchStoreWriter",
    "find_complete_store",
    "is_patch_store",
    "open_patch_store",
]
