"""Patches in (a store or a slide, see :mod:`.patch_source`), per-patch class probabilities
and PixelCAM foreground maps out.

The model arrives already loaded (``model.checkpoint.load_checkpoint`` builds it), wrapped
with its metadata in an :class:`InferenceModel`. The source hands over uint8 batches; each
travels to the device as uint8 and is converted, resized and normalised there by the same
``uint8_eval_input`` that validation used. Foreground maps
stay at feature resolution: the stitcher upsamples them bilinearly itself (exactly as
``PixelCAM.foreground_map`` would), so nothing larger crosses back to the host.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsi_pixelcam.config import InferConfig
from wsi_pixelcam.data.transforms import uint8_eval_input
from wsi_pixelcam.inference.patch_source import PatchSource, RowsBatch
from wsi_pixelcam.model.amp import autocast
from wsi_pixelcam.model.cam import compute_cam
from wsi_pixelcam.model.checkpoint import CheckpointMeta, load_checkpoint
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.model.pixelcam import PixelCAM

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
    """One batch: the source's rows ``rows``, in the order the source handed them out.

    ``fg_maps`` (B, h, w) is the pixel head's softmax channel 1 at feature resolution;
    ``cams`` (B, h, w), min-max normalised per patch, is filled only when the teacher CAM was
    requested (else an empty (B, 0, 0) array).
    """

    rows: np.ndarray  # (B,) int64
    class_probs: np.ndarray  # (B, K) float32
    fg_maps: np.ndarray  # (B, h, w) float32
    cams: np.ndarray  # (B, h, w) float32, or (B, 0, 0)


def predict_source(
    source: PatchSource,
    model: InferenceModel,
    cfg: InferConfig,
    *,
    cam_class: int = -1,
) -> Iterator[PatchPredictions]:
    """Predict every patch of ``source`` in order, one :class:`PatchPredictions` per batch.

    ``cam_class`` is the class whose teacher CAM is computed when ``cfg.teacher_cam``.
    Raises TilingMismatchError when the patches do not fit the model.
    """
    source.check_fits(model.meta, cfg.mpp_tolerance)
    device = resolve_device(cfg.device)
    network = model.network.to(device).eval()
    batches = source.batches(
        cfg.batch_size, workers=cfg.num_workers, pin_memory=device.type == "cuda"
    )
    yield from predict_batches(
        network,
        model.meta,
        batches,
        device,
        amp=cfg.amp,
        cam_method=cfg.cam_method if cfg.teacher_cam else None,
        cam_class=cam_class,
    )


def predict_batches(
    network: PixelCAM,
    meta: CheckpointMeta,
    batches: Iterable[RowsBatch],
    device: torch.device,
    *,
    amp: bool = True,
    cam_method: str | None = None,
    cam_class: int = -1,
) -> Iterator[PatchPredictions]:
    """Predict ``(rows, uint8 (B, P, P, 3))`` batches, one :class:`PatchPredictions` each.

    The whole patch is resized to the model's input size (no crop), so each map covers the
    patch's full footprint. On CUDA, batch ``i`` is handed back only after batch ``i + 1`` has
    been queued on the GPU (results travel back by asynchronous copies), so the GPU never
    waits for the host to fetch the next batch or to use the last results.
    """
    in_flight: _InFlight | None = None
    for rows, patches in batches:
        launched = _launch(
            network, meta, np.asarray(rows, np.int64), patches, device, amp, cam_method, cam_class
        )
        if in_flight is not None:
            yield in_flight.result()
        in_flight = launched
    if in_flight is not None:
        yield in_flight.result()


@dataclass(frozen=True)
class _InFlight:
    """One batch's outputs being copied back to the host; ``done`` is None off CUDA."""

    rows: np.ndarray
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    done: torch.cuda.Event | None

    def result(self) -> PatchPredictions:
        if self.done is not None:
            self.done.synchronize()
        probs, fg_maps, cams = (t.numpy() for t in self.outputs)
        return PatchPredictions(self.rows, probs, fg_maps, cams)


def _launch(
    network: PixelCAM,
    meta: CheckpointMeta,
    rows: np.ndarray,
    patches: torch.Tensor,
    device: torch.device,
    amp: bool,
    cam_method: str | None,
    cam_class: int,
) -> _InFlight:
    """Queue one batch's forward pass and the copies of its outputs back to the host."""
    images = uint8_eval_input(
        patches.to(device, non_blocking=True), int(meta.input_px), meta.mean, meta.std
    )
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
        return _InFlight(rows, (class_probs.cpu(), fg_maps.cpu(), cams.cpu()), None)
    host = (_copy_back(class_probs), _copy_back(fg_maps), _copy_back(cams))
    done = torch.cuda.Event()
    done.record()
    return _InFlight(rows, host, done)


def _copy_back(tensor: torch.Tensor) -> torch.Tensor:
    """Queue an asynchronous copy of a CUDA tensor into new pinned host memory."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
