"""One AMP rule for training and inference: float16 autocast on CUDA only."""

from __future__ import annotations

import pytest
import torch

from wsi_pixelcam.model.amp import autocast, uses_amp


@pytest.mark.parametrize(
    ("device", "amp", "expected"),
    [("cuda", True, True), ("cuda:1", True, True), ("cuda", False, False),
     ("cpu", True, False), ("mps", True, False)],
)  # fmt: skip
def test_amp_applies_on_cuda_only_when_asked(device, amp, expected):
    assert uses_amp(torch.device(device), amp) is expected


def test_off_cuda_the_context_leaves_float32_alone():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), amp=True):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_matmuls_run_in_float16():
    a = torch.randn(4, 4, device="cuda")
    with autocast(a.device, amp=True):
        assert (a @ a).dtype == torch.float16
    with autocast(a.device, amp=False):
        assert (a @ a).dtype == torch.float32
