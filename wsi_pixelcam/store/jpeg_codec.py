"""A zarr v3 array->bytes codec that stores each (1, H, W, 3) uint8 chunk as one JPEG.

zarr 3.1 ships no image codec; imagecodecs has fast libjpeg-turbo bindings. Inside a sharding
codec with one patch per inner chunk, a random patch read is one small byte-range read plus one
JPEG decode. Registered under ``wsi_pixelcam.jpeg``: readers must import this module (importing
``wsi_pixelcam.store`` does) before opening a store that uses it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec

CODEC_NAME = "wsi_pixelcam.jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Lossy JPEG for uint8 RGB image chunks shaped (..., H, W, 3) with leading dims of 1."""

    is_fixed_size = False
    quality: int = 90

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegCodec:
        config = data.get("configuration") or {}
        return cls(quality=int(config.get("quality", 90)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if np.dtype(dtype.to_native_dtype()) != np.uint8 or shape[-1] != 3:
            raise ValueError(f"{CODEC_NAME} stores uint8 RGB arrays (..., 3), not {dtype} {shape}")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # in a worker thread: zarr runs codecs on one event-loop thread, and imagecodecs
        # releases the GIL, so this is what lets a shard's patches decode in parallel
        image = await asyncio.to_thread(imagecodecs.jpeg_decode, chunk_bytes.to_bytes())
        pixels: Any = np.ascontiguousarray(image).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(pixels)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        image = np.asarray(chunk_array.as_ndarray_like())
        image = image.reshape(image.shape[-3:])
        encoded = await asyncio.to_thread(imagecodecs.jpeg_encode, image, level=self.quality)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is not known in advance")


register_codec(CODEC_NAME, JpegCodec)
