"""Zarr v3 stores: per-slide patch stores and (in heatmap_store) stitched heatmaps."""

from wsi_pixelcam.store.jpeg_codec import JpegCodec
from wsi_pixelcam.store.patch_store import (
    PatchStore,
    PatchStoreWriter,
    is_complete,
    open_patch_store,
    read_store_attrs,
)

__all__ = [
    "JpegCodec",
    "PatchStore",
    "PatchStoreWriter",
    "is_complete",
    "open_patch_store",
    "read_store_attrs",
]
