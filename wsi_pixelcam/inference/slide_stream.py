"""A slide file as a :class:`~.patch_source.PatchSource`: patches cut while the model runs.

No patch store is written and no patch is JPEG-encoded and decoded again. The grid, tissue
mask, level choice and MPP checks are the tiler's own (:func:`tiling.slide_plan.plan_slide`),
and the pixels come from its block reader (:func:`tiling.patch_reader.iter_patches`), so the
rows are exactly the patches, in exactly the order, that ``tile`` would store. Reader
threads fill uint8 host batches (pinned when they go to a GPU) a few batches ahead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.data.prefetch import prefetch
from wsi_pixelcam.inference.patch_source import RowsBatch, SourceGeometry
from wsi_pixelcam.model.checkpoint import CheckpointMeta
from wsi_pixelcam.slide import SlideReader, open_slide
from wsi_pixelcam.tiling.patch_reader import iter_patches, plan_blocks
from wsi_pixelcam.tiling.qc import stage_qc
from wsi_pixelcam.tiling.slide_plan import SlidePlan, check_unreadable, plan_slide, quick_hash

logger = logging.getLogger(__name__)

QC_DIR = "qc"
"""The streamed slide's tissue QC files, inside its output folder (a store keeps them in
``<slide_id>.qc/`` beside itself)."""


class SlideStream:
    """Context manager: the slide open, its plan made; rows in the order they are read."""

    def __init__(
        self, path: Path, cfg: TileConfig, slide_id: str | None, mpp_override: float | None
    ) -> None:
        self.path = path
        self.cfg = cfg
        self.mpp_override = mpp_override
        self._slide_id = slide_id or path.stem
        self.n_unreadable = 0
        self._reader: SlideReader | None = None
        self._plan: SlidePlan | None = None
        self._read_order = np.zeros(0, np.int64)

    def __enter__(self) -> SlideStream:
        self._reader = open_slide(self.path, self.cfg.backend)
        try:
            self._plan = plan_slide(self._reader, self.path, self.cfg, self.mpp_override)
        except BaseException:
            self._reader.close()
            raise
        grid = self._plan.grid
        blocks = plan_blocks(grid.target_xy, self.cfg.patch_px, self.cfg.stride)
        self._read_order = np.concatenate([block.indices for block in blocks]).astype(np.int64)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.close()

    @property
    def reader(self) -> SlideReader:
        if self._reader is None:
            raise RuntimeError("SlideStream used outside its with-block")
        return self._reader

    @property
    def plan(self) -> SlidePlan:
        if self._plan is None:
            raise RuntimeError("SlideStream used outside its with-block")
        return self._plan

    @property
    def slide_id(self) -> str:
        return self._slide_id

    @property
    def where(self) -> Path:
        return self.path

    @property
    def coords(self) -> np.ndarray:
        return self.plan.grid.xy_level0[self._read_order]

    @property
    def tissue_frac(self) -> np.ndarray:
        return self.plan.grid.tissue_frac[self._read_order]

    def __len__(self) -> int:
        return len(self.plan.grid)

    def check_fits(self, meta: CheckpointMeta, tolerance: float) -> None:
        """Nothing to check: ``infer`` cuts the stream at the checkpoint's own patch size and
        mpp (``settings.tile_config``), a pyramid level snapped to within tile.mpp_tolerance."""

    def geometry(self) -> SourceGeometry:
        scale = self.plan.choice.scale_level0
        width0, height0 = self.reader.dimensions
        return SourceGeometry(
            mpp0=self.plan.mpp.mean,
            width0=width0,
            height0=height0,
            bounds=self.reader.bounds_offset,
            patch_level0=self.cfg.patch_px * scale,
            stride_level0=self.cfg.stride * scale,
            patch_mpp=scale * self.plan.mpp.mean,
        )

    def identity(self) -> dict[str, Any]:
        size, digest = quick_hash(self.path)
        grid = {
            k: v for k, v in self.cfg.grid_params().items() if k not in ("store", "labels")
        }  # how patches are stored or labelled does not change a stream
        return {
            "slide": str(self.path.resolve()),
            "size_bytes": size,
            "content_hash": digest,
            "grid": grid,
            "mpp_override": self.mpp_override,
            "n_patches": len(self),
        }

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "store": None,
            "streamed_from": str(self.path),
            "mpp_level0": plan.mpp.mean,
            "mpp_source": plan.mpp.source,
            "read_level": plan.choice.level,
            "n_unreadable_patches": self.n_unreadable,
        }

    def thumbnail(self) -> np.ndarray | None:
        return self.plan.thumbnail.rgb

    def write_qc(self, out_dir: Path) -> str | None:
        plan = self.plan
        stage_qc(
            out_dir / QC_DIR,
            plan.thumbnail.rgb,
            plan.mask,
            level0_per_px=plan.thumb_px_level0,
            mpp_level0=plan.mpp.mean,
            frame_offset=self.reader.bounds_offset,
            min_hole_um2=self.cfg.tissue.min_hole_um2,
            metadata={"slide": self.path.name, "frame": "qupath (level0 minus bounds offset)"},
        ).publish()
        return QC_DIR

    def batches(self, batch_size: int, *, workers: int, pin_memory: bool) -> Iterable[RowsBatch]:
        """Batches filled by a thread from the block reader's threads (``tile.read_threads``);
        ``workers`` (loader processes, a store's) does not apply."""
        return prefetch(self._read_batches(batch_size, pin_memory), depth=2)

    def _read_batches(self, batch_size: int, pin_memory: bool) -> Iterator[RowsBatch]:
        grid, cfg = self.plan.grid, self.cfg
        row_of = np.empty(len(grid), np.int64)
        row_of[self._read_order] = np.arange(len(grid))
        shape = (batch_size, cfg.patch_px, cfg.patch_px, 3)
        patches = torch.empty(shape, dtype=torch.uint8, pin_memory=pin_memory)
        pixels, rows = patches.numpy(), np.empty(batch_size, np.int64)
        filled = 0
        self.n_unreadable = 0
        reads = iter_patches(
            self.reader, self.plan.choice, grid.target_xy, cfg.patch_px, cfg.stride,
            cfg.read_threads,
        )  # fmt: skip
        for read in reads:
            if read.pixels is None:
                self.n_unreadable += 1
                continue
            pixels[filled] = read.pixels
            rows[filled] = row_of[read.index]
            filled += 1
            if filled == batch_size:
                yield rows, patches
                patches = torch.empty(shape, dtype=torch.uint8, pin_memory=pin_memory)
                pixels, rows = patches.numpy(), np.empty(batch_size, np.int64)
                filled = 0
        if filled:
            yield rows[:filled], patches[:filled]
        check_unreadable(self.path, self.n_unreadable, len(grid), cfg.max_bad_patch_frac)
        if self.n_unreadable:
            logger.warning("%s: skipped %d undecodable patches", self.path, self.n_unreadable)
