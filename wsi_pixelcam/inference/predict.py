"""Patch store in, per-patch class probabilities and PixelCAM foreground maps out.

The model arrives already loaded (``model.checkpoint.load_checkpoint`` builds it), wrapped
with its metadata in an :class:`InferenceModel`. Patches are read in contiguous index ranges
(one zarr call decodes a whole batch, JPEG decoding in parallel threads) by DataLoader worker
processes that open the store lazily; the uint8 batch travels to the device and is converted,
resized and normalised there by the same ``eval_input`` that validation used. Foreground maps
stay at feature resolution: the stitcher upsamples them bilinearly itself (exactly as
``PixelCAM.foreground_map`` would), so nothing larger crosses back to the host.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsi_pixelcam.config import InferConfig
from wsi_pixelcam.data.prefetch import prefetch
from wsi_pixelcam.data.transforms import eval_input
from wsi_pixelcam.model.amp import autocast
from wsi_pixelcam.model.cam import compute_cam
from wsi_pixelcam.model.checkpoint import CheckpointMeta, load_checkpoint
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.store.damaged_chunks import read_rows
from wsi_pixelcam.store.patch_store import PatchStore, open_patch_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceModel:
    """A loaded PixelCAM, the metadata it must be fed by, and a name for provenance."""

    network: PixelCAM
    meta: CheckpointMeta
    name: str = "pixelcam"

    def fingerprint(self) -> str:
        """SHA-256 of the weights: outputs made by other weights are stale."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.network.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def load_model(path: str | Path) -> InferenceModel:
    """The checkpoint at ``path`` ready for inference, named after its file for provenance;
    CheckpointError naming the file when it is missing or not a wsi-pixelcam checkpoint."""
    network, meta = load_checkpoint(path)
    return InferenceModel(network, meta, Path(path).name)


@dataclass(frozen=True)
class PatchPredictions:
    """One batch: patches ``start .. start + B`` of the store, in store order.

    ``fg_maps`` (B, h, w) is the pixel head's softmax channel 1 at feature resolution;
    ``cams`` (B, h, w), min-max normalised per patch, is filled only when the teacher CAM was
    requested (else an empty (B, 0, 0) array).
    """

    start: int
    class_probs: np.ndarray  # (B, K) float32
    fg_maps: np.ndarray  # (B, h, w) float32
    cams: np.ndarray  # (B, h, w) float32, or (B, 0, 0)


def check_store_fits(store: PatchStore, meta: CheckpointMeta, mpp_tolerance: float) -> None:
    """Refuse a store cut at another resolution or patch size than the model was trained on
    (the check train and eval make: :meth:`PatchStoreMeta.check_fits`)."""
    store.meta.check_fits(
        patch_px=meta.patch_px,
        mpp=meta.mpp,
        tolerance=mpp_tolerance,
        reference="the model",
        where=store.path,
    )


class _StoreBatches(Dataset[tuple[int, torch.Tensor]]):
    """Contiguous ranges of a patch store; each worker opens the store on first use."""

    def __init__(self, path: Path, n_patches: int, batch_size: int) -> None:
        self.path = path
        self.n_patches = n_patches
        self.batch_size = batch_size
        self._patches: Any = None

    def __len__(self) -> int:
        return math.ceil(self.n_patches / self.batch_size)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        if self._patches is None:
            self._patches = open_patch_store(self.path).patches
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.n_patches)
        rows = read_rows(self._patches, slice(start, stop), self.path)
        return start, torch.from_numpy(np.ascontiguousarray(rows))


def _loader_workers(requested: int) -> int:
    """Worker processes the loader may start: none inside a daemonic process (a dask worker)."""
    if requested > 0 and multiprocessing.current_process().daemon:
        logger.info(
            "running in a daemonic process (dask worker): decoding patches in a reader thread"
        )
        return 0
    return requested


def predict_store(
    store: PatchStore,
    model: InferenceModel,
    cfg: InferConfig,
    *,
    cam_class: int = -1,
) -> Iterator[PatchPredictions]:
    """Predict every patch of ``store`` in order, one :class:`PatchPredictions` per batch.

    ``cam_class`` is the class whose teacher CAM is computed when ``cfg.teacher_cam``.
    Raises TilingMismatchError when the store does not fit the model.
    """
    check_store_fits(store, model.meta, cfg.mpp_tolerance)
    device = resolve_device(cfg.device)
    network = model.network.to(device).eval()
    workers = _loader_workers(cfg.num_workers)
    loader = DataLoader(
        _StoreBatches(store.path, len(store), cfg.batch_size),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from predict_batches(
        network,
        model.meta,
        loader if workers else prefetch(loader, depth=2),
        device,
        amp=cfg.amp,
        cam_method=cfg.cam_method if cfg.teacher_cam else None,
        cam_class=cam_class,
    )


def predict_batches(
    network: PixelCAM,
    meta: CheckpointMeta,
    batches: Iterable[tuple[int, torch.Tensor]],
    device: torch.device,
    *,
    amp: bool = True,
    cam_method: str | None = None,
    cam_class: int = -1,
) -> Iterator[PatchPredictions]:
    """Predict ``(start, uint8 (B, P, P, 3))`` batches, one :class:`PatchPredictions` each.

    The whole patch is resized to the model's input size (no crop), so each map covers the
    patch's full footprint. On CUDA, batch ``i`` is handed back only after batch ``i + 1`` has
    been queued on the GPU (results travel back by asynchronous copies), so the GPU never
    waits for the host to fetch the next batch or to use the last results.
    """
    in_flight: _InFlight | None = None
    for start, patches in batches:
        launched = _launch(network, meta, int(start), patches, device, amp, cam_method, cam_class)
        if in_flight is not None:
            yield in_flight.result()
        in_flight = launched
    if in_flight is not None:
        yield in_flight.result()


@dataclass(frozen=True)
class _InFlight:
    """One batch's outputs being copied back to the host; ``done`` is None off CUDA."""

    start: int
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    done: torch.cuda.Event | None

    def result(self) -> PatchPredictions:
        if self.done is not None:
            self.done.synchronize()
        probs, fg_maps, cams = (t.numpy() for t in self.outputs)
        return PatchPredictions(self.start, probs, fg_maps, cams)


def _launch(
    network: PixelCAM,
    meta: CheckpointMeta,
    start: int,
    patches: torch.Tensor,
    device: torch.device,
    amp: bool,
    cam_method: str | None,
    cam_class: int,
) -> _InFlight:
    """Queue one batch's forward pass and the copies of its outputs back to the host."""
    images = patches.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    images = eval_input(images, int(meta.input_px), meta.mean, meta.std)
    with torch.inference_mode(), autocast(device, amp):
        out = network(images)
        class_probs = torch.softmax(out.image_logits.float(), dim=1)
        fg_maps = torch.softmax(out.pixel_logits.float(), dim=1)[:, 1]
    if cam_method is not None:
        target = cam_class % network.num_classes
        cams = compute_cam(network, images, target, cam_method).float()  # type: ignore[arg-type]
    else:
        cams = torch.zeros((len(patches), 0, 0), device=device)
    if device.type != "cuda":
        return _InFlight(start, (class_probs.cpu(), fg_maps.cpu(), cams.cpu()), None)
    host = (_copy_back(class_probs), _copy_back(fg_maps), _copy_back(cams))
    done = torch.cuda.Event()
    done.record()
    return _InFlight(start, host, done)


def _copy_back(tensor: torch.Tensor) -> torch.Tensor:
    """Queue an asynchronous copy of a CUDA tensor into new pinned host memory."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
