"""Out-of-core stitching of per-patch foreground maps into the slide heatmap.

Each patch map is treated as a piecewise-constant image over the patch's footprint. Maps
coarser than the footprint are first upsampled bilinearly (so 8x8 CAMs do not stitch as
blocks), then multiplied by a blending window and integrated exactly over every heatmap pixel
the footprint touches, fractional edges included. Every step is linear and separable, so a
patch's contribution is ``Ly @ map @ Lx.T`` with one small matrix per axis. The heatmap is
``sum(weight * map) / sum(weight)`` over all patches: a pixel half covered by a patch gets
half that patch's weight, overlaps blend smoothly, and normalising by summed weights (not
patch counts) keeps the result unbiased wherever the window is not flat.

Memory is bounded by one batch plus the chunks it touches; the accumulation lives in the
:class:`~wsi_pixelcam.store.heatmap_store.HeatmapStore`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from wsi_pixelcam.store.heatmap_store import Block, HeatmapStore

logger = logging.getLogger(__name__)

Window = Literal["cosine", "gaussian", "flat"]
_GAUSSIAN_SIGMA = 1 / 8  # of the patch side, as in nnU-Net's sliding-window blending


class Stitcher:
    """Blend patch maps into a :class:`HeatmapStore`, then finish it.

    ``patch_level0_px`` is the patch side in level-0 pixels; heatmap resolution and chunking
    come from the store. ``window`` weights each patch's centre over its edges: ``cosine``
    (raised cosine, sin^2), ``gaussian`` (sigma 1/8 of the side) or ``flat``.
    """

    def __init__(
        self, store: HeatmapStore, *, patch_level0_px: float, window: Window = "cosine"
    ) -> None:
        if patch_level0_px <= 0:
            raise ValueError(f"patch_level0_px must be positive, got {patch_level0_px}")
        if window not in ("cosine", "gaussian", "flat"):
            raise ValueError(f"window must be cosine, gaussian or flat, got {window!r}")
        self.store = store
        self.patch_level0_px = float(patch_level0_px)
        self.window: Window = window
        self.footprint_px = self.patch_level0_px / store.level0_per_px
        # heatmap pixels a patch reaches from its first on each axis, whatever its phase
        # (the last may get zero weight): the extent both stitching and counting use
        self.cells_per_patch = math.ceil(self.footprint_px) + 1
        self.n_added = 0

    def add(self, maps: np.ndarray, xy_level0: np.ndarray) -> None:
        """Accumulate a batch: ``maps`` (B, h, w) or (B, C, h, w), ``xy_level0`` (B, 2).

        ``xy_level0`` is each patch's top-left (x, y) in level-0 pixels, the frame of the
        patch store's ``coords``.
        """
        maps = np.asarray(maps, dtype=np.float64)
        if maps.ndim == 3:
            maps = maps[:, None]
        xy = np.asarray(xy_level0, dtype=np.float64).reshape(-1, 2)
        if maps.ndim != 4 or maps.shape[0] != xy.shape[0]:
            raise ValueError(
                f"maps must be (B, h, w) or (B, C, h, w) with B = len(xy_level0) = {xy.shape[0]}, "
                f"got {maps.shape}"
            )
        if maps.shape[1] != self.store.n_channels:
            raise ValueError(f"maps have {maps.shape[1]} channels, store {self.store.n_channels}")
        if maps.shape[0] == 0:
            return
        if not np.isfinite(maps).all():
            raise ValueError("patch maps contain NaN or infinite values")
        _, _, h, w = maps.shape
        scale = self.store.level0_per_px
        ly, wy, y0 = self._axis(xy[:, 1] / scale, h)
        lx, wx, x0 = self._axis(xy[:, 0] / scale, w)
        weighted = ly[:, None] @ maps @ lx.transpose(0, 2, 1)[:, None]  # (B, C, R, Q)
        weight = wy[:, :, None] * wx[:, None, :]  # (B, R, Q)
        self.store.add(_merge_by_chunk(y0, x0, weighted, weight, self.store.chunk_px))
        self.store.arrived(self._patches_per_chunk(xy))
        self.n_added += maps.shape[0]

    def expect(self, xy_level0: np.ndarray) -> None:
        """Announce every patch that will be added (level-0 top-left corners), so the store
        finishes each heatmap chunk once its last patch is in, not all of them at the end.
        Patches announced but never added only keep their chunks open until :meth:`finish`."""
        self.store.expect(self._patches_per_chunk(np.asarray(xy_level0, np.float64)))

    def _patches_per_chunk(self, xy_level0: np.ndarray) -> dict[tuple[int, int], int]:
        """How many of these patches reach each store chunk: a patch covers
        ``cells_per_patch`` heatmap pixels from its first on each axis."""
        start = np.floor(xy_level0.reshape(-1, 2) / self.store.level0_per_px).astype(np.int64)
        height, width = self.store.shape_hw
        last = np.minimum(start + self.cells_per_patch - 1, [width - 1, height - 1])
        first = np.maximum(start, 0)
        inside = (last >= first).all(axis=1)
        lo, hi = first[inside] // self.store.chunk_px, last[inside] // self.store.chunk_px
        if not len(lo):
            return {}
        span = int((hi - lo).max()) + 1
        keys = [
            np.column_stack([lo[sel, 1] + dy, lo[sel, 0] + dx])
            for dy in range(span)
            for dx in range(span)
            if (sel := (lo[:, 1] + dy <= hi[:, 1]) & (lo[:, 0] + dx <= hi[:, 0])).any()
        ]
        chunks, counts = np.unique(np.concatenate(keys), axis=0, return_counts=True)
        return {(int(cy), int(cx)): int(n) for (cy, cx), n in zip(chunks, counts, strict=True)}

    def finish(self) -> Path:
        """Normalise by summed weights (NaN where none), build the pyramid, finalise the store."""
        logger.info("stitched %d patches", self.n_added)
        return self.store.finalize()

    def _axis(self, start_px: np.ndarray, n_map: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-patch resampling along one axis.

        Returns ``L`` (B, R, n_map) mapping map samples to window-weighted integrals over
        heatmap pixels, the integrated window ``a`` (B, R) and the first heatmap pixel (B,).
        Both depend only on where a patch starts within its first heatmap pixel, and patches
        on a grid share a few such phases, so each distinct phase is computed once.
        """
        first = np.floor(start_px).astype(np.int64)
        phases, which = np.unique(np.round(start_px - first, 9), return_inverse=True)
        size = self.footprint_px
        n_fine = max(n_map, math.ceil(size - 1e-9))
        upsample = _linear_resize_matrix(n_fine, n_map)  # (n_fine, n_map)
        window = _window_1d(self.window, n_fine)
        n_cells = self.cells_per_patch
        cell_lo = np.arange(n_cells)[None, :, None]  # (1, R, 1)
        edges = phases[:, None] + np.arange(n_fine + 1) * (size / n_fine)  # (P, n_fine + 1)
        lo, hi = edges[:, None, :-1], edges[:, None, 1:]  # (P, 1, n_fine)
        overlap = np.clip(np.minimum(hi, cell_lo + 1) - np.maximum(lo, cell_lo), 0.0, None)
        weighted_overlap = overlap * window  # (P, R, n_fine)
        resample = weighted_overlap @ upsample
        return resample[which], weighted_overlap.sum(axis=2)[which], first


def _merge_by_chunk(
    y0: np.ndarray, x0: np.ndarray, weighted: np.ndarray, weight: np.ndarray, chunk_px: int
) -> list[Block]:
    """Sum patch contributions that start in the same heatmap chunk into one block each.

    The store then adds one block per chunk instead of one per patch: a few array additions
    per batch rather than Python work per patch. ``weighted`` is (B, C, R, Q), ``weight``
    (B, R, Q); patch ``b``'s contribution starts at heatmap pixel ``(y0[b], x0[b])``.
    """
    n_channels, rows, cols = weighted.shape[1:]
    cell_y, cell_x = np.floor_divide(y0, chunk_px), np.floor_divide(x0, chunk_px)
    cells, group = np.unique(np.column_stack([cell_y, cell_x]), axis=0, return_inverse=True)
    order = np.argsort(group.ravel(), kind="stable")
    splits = np.flatnonzero(np.diff(group.ravel()[order])) + 1
    blocks = []
    for (cy, cx), members in zip(cells, np.split(order, splits), strict=True):
        oy, ox = y0[members] - cy * chunk_px, x0[members] - cx * chunk_px
        top, left = int(oy.min()), int(ox.min())
        height, width = int(oy.max()) - top + rows, int(ox.max()) - left + cols
        # flat index of every (patch, r, q) sample in a (height, width) canvas
        flat = ((oy - top)[:, None, None] + np.arange(rows)[None, :, None]) * width + (
            (ox - left)[:, None, None] + np.arange(cols)[None, None, :]
        )
        flat = flat.ravel()
        size = height * width
        sums = np.stack(
            [np.bincount(flat, weighted[members, c].ravel(), size) for c in range(n_channels)]
        )
        total = np.bincount(flat, weight[members].ravel(), size)
        blocks.append(
            Block(
                int(cy * chunk_px + top),
                int(cx * chunk_px + left),
                sums.reshape(n_channels, height, width).astype(np.float32),
                total.reshape(height, width).astype(np.float32),
            )
        )
    return blocks


def _window_1d(kind: Window, n: int) -> np.ndarray:
    """Blending weights at the centres of ``n`` samples across the patch (never exactly 0)."""
    u = (np.arange(n) + 0.5) / n
    if kind == "cosine":
        return np.sin(np.pi * u) ** 2
    if kind == "gaussian":
        return np.exp(-((u - 0.5) ** 2) / (2 * _GAUSSIAN_SIGMA**2))
    return np.ones(n)


def _linear_resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of bilinear resampling with pixel centres aligned, edges clamped."""
    if n_out == n_in:
        return np.eye(n_in)
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    left = np.floor(src).astype(np.int64)
    right = np.minimum(left + 1, n_in - 1)
    frac = src - left
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), left), 1 - frac)
    np.add.at(matrix, (np.arange(n_out), right), frac)
    return matrix


# Colour ramp for overlays: dark indigo (0) through blue, green and yellow to red (1).
_RAMP_AT = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array(
    [[48, 18, 59], [40, 120, 220], [40, 200, 120], [250, 200, 40], [200, 20, 20]], dtype=np.float64
)


def overlay_png(
    thumbnail_rgb: np.ndarray, heatmap: np.ndarray, path: str | Path, *, alpha: float = 0.5
) -> Path:
    """Write the heatmap, colour-mapped, alpha-blended on the thumbnail as a PNG.

    Both images must cover the slide's level-0 extent from its top-left corner; the heatmap
    (2-D, values in [0, 1]) is resampled to the thumbnail's size by nearest neighbour. NaN
    (no tissue, no patch) leaves the thumbnail showing through.
    """
    thumb = np.asarray(thumbnail_rgb)
    heat = np.asarray(heatmap, dtype=np.float64)
    if thumb.ndim != 3 or thumb.shape[2] != 3 or heat.ndim != 2:
        raise ValueError(
            f"need an (H, W, 3) thumbnail and a 2-D heatmap, got {thumb.shape}, {heat.shape}"
        )
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    th, tw = thumb.shape[:2]
    rows = np.minimum((np.arange(th) + 0.5) * heat.shape[0] / th, heat.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(tw) + 0.5) * heat.shape[1] / tw, heat.shape[1] - 1).astype(int)
    values = heat[rows[:, None], cols[None, :]]
    known = ~np.isnan(values)
    clipped = np.clip(np.nan_to_num(values), 0.0, 1.0)
    colour = np.stack([np.interp(clipped, _RAMP_AT, _RAMP_RGB[:, k]) for k in range(3)], axis=-1)
    a = np.where(known, alpha, 0.0)[..., None]
    blended = thumb.astype(np.float64) * (1 - a) + colour * a
    path = Path(path)
    Image.fromarray(np.round(blended).astype(np.uint8)).save(path, format="PNG")
    return path
