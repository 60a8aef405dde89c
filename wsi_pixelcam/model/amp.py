"""Mixed precision: the one rule for when float16 autocast applies, shared by training and
inference so a config's ``amp`` means the same everywhere."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def uses_amp(device: torch.device, amp: bool) -> bool:
    """Whether ``amp`` takes effect on ``device``: float16 autocast is used on CUDA only."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, amp: bool) -> AbstractContextManager[None]:
    """float16 autocast on ``device`` where :func:`uses_amp` says so, else a no-op context."""
    if uses_amp(device, amp):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()
