"""The training loader: class-balanced sampling, seeded like every other draw of an epoch."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from wsi_pixelcam.training.distributed import EpochSampler, class_balance_weights
from wsi_pixelcam.training.loop import make_loader


class _Labels(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"label": torch.tensor(int(self.labels[index])), "index": torch.tensor(index)}


def _drawn(labels: np.ndarray, seed: int, balance: bool) -> torch.Tensor:
    weights = class_balance_weights(labels) if balance else None
    sampler = EpochSampler(len(labels), seed=seed, shuffle=True, weights=weights)
    loader = make_loader(
        _Labels(labels), batch_size=50, shuffle=False, num_workers=0, seed=seed,
        device=torch.device("cpu"), sampler=sampler,
    )  # fmt: skip
    return torch.cat([batch["label"] for batch in loader])


def test_balanced_sampling_draws_each_class_equally_often() -> None:
    labels = np.array([0] * 900 + [1] * 100)  # 9 to 1, as background to tumour patches
    drawn = _drawn(labels, seed=0, balance=True)
    assert len(drawn) == len(labels)  # an epoch keeps its length
    assert 0.45 <= drawn.float().mean().item() <= 0.55
    assert torch.equal(drawn, _drawn(labels, seed=0, balance=True))  # seeded: resumable
    assert not torch.equal(drawn, _drawn(labels, seed=1, balance=True))
    plain = _drawn(labels, seed=0, balance=False)
    assert int(plain.sum()) == 100  # a shuffle: every patch once
