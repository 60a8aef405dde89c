"""Which torch device a config's ``device`` names, refused in one line when it is absent."""

from __future__ import annotations

import torch

from wsi_pixelcam.errors import ModelError


def resolve_device(requested: str) -> torch.device:
    """``auto`` is the first CUDA GPU, else Apple's MPS, else the CPU.

    A name torch does not know, or a GPU asked for but absent, is a ModelError, so training
    and inference fail before any work rather than deep inside the first batch.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ModelError(
            f"device {requested!r} is not a torch device; use auto, cpu, cuda[:N] or mps"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"device={requested!r}: CUDA is not available (no CUDA GPU is visible to torch "
                f"{torch.__version__}); use device: auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"device={requested!r}: only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device={requested!r}: MPS is not available; use device: auto or cpu")
    return device
