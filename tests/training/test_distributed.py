"""Data-parallel training: the epoch's split between ranks (pure), and real torchrun runs.

The torchrun tests start two real processes (gloo, CPU) on real stores and a real tiny timm
ViT: LayerNorm only, so no BatchNorm statistics differ between one process's batch of 8 and
two ranks' batches of 4 (torch has no SyncBatchNorm on CPUs; on GPUs the ranks use it).
Augmentation is off in them: crops, flips and jitter are drawn per rank, so with them a
2-rank run matches one process in distribution, not number for number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
import yaml
from storegen import make_store

from wsi_pixelcam.config import TrainConfig
from wsi_pixelcam.errors import ConfigError
from wsi_pixelcam.model.checkpoint import load_checkpoint
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.training.distributed import (
    EpochSampler,
    balanced_shares,
    class_balance_weights,
    global_position,
    single_process,
)
from wsi_pixelcam.training.fit import train

CPU = torch.device("cpu")

# no augmentation, no dropout: every number a 2-rank run makes, one process makes too
EXACT: dict[str, Any] = {
    "model": {"encoder": "test_vit", "stride8_no_dilation": False, "dropout": 0.0},
    "input": {
        "input_px": 32, "resize_px": 32, "flips": False,
        "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
    },
    "optim": {"batch_size": 8, "base_lr": 0.01},
    "teacher": {"epochs": 2},
    "pixelcam": {"epochs": 2, "seeds": {"erode_k": 1, "n_fg": 1, "n_bg": 1}},
    "data": {"num_workers": 0, "val_fraction": 0.25},
    "eval": {"eval_px": 32},
    "device": "cpu",
}  # fmt: skip
TOLERANCE = 1e-4
"""Gradients summed in another order (two means of 4 averaged vs one mean of 8) differ in
the last float32 bits; over a few dozen SGD steps that stays far below 1e-4."""


def _stores(root: Path, n: int = 16) -> list[Path]:
    root.mkdir(parents=True)
    return [make_store(root / f"s{i}.zarr", n=n, seed=i) for i in range(4)]


def _torchrun(args: list[str], **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "wsi_pixelcam", "train", *args,
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, text=True, **popen)


def _train_args(stores: list[Path], out: Path, config: Path) -> list[str]:
    return ["--stores", *map(str, stores), "--out", str(out), "--config", str(config)]


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# the epoch's split between ranks


@pytest.mark.parametrize("weighted", [False, True])
def test_ranks_together_train_exactly_the_global_batches(weighted: bool) -> None:
    labels = np.array([0] * 30 + [1] * 7)
    weights = class_balance_weights(labels) if weighted else None
    common = {"seed": 3, "shuffle": True, "weights": weights, "whole": 8}
    alone = list(EpochSampler(len(labels), **common))
    assert len(alone) == 32  # cut to whole global batches of 8
    world = 2
    shares = [list(EpochSampler(len(labels), **common, rank=r, world_size=world)) for r in (0, 1)]
    assert [len(s) for s in shares] == [16, 16]
    for step in range(4):  # rank batches of 4 at each step make the global batch of 8
        batches = [s[step * 4 : (step + 1) * 4] for s in shares]
        assert sorted(batches[0] + batches[1]) == sorted(alone[step * 8 : (step + 1) * 8])
        for rank, batch in enumerate(batches):
            context = single_process(CPU).__class__(rank, world, rank, CPU)
            positions = [global_position(step, i, 4, context) for i in range(4)]
            assert [alone[p] for p in positions] == batch  # the same seeds on any rank
    if weighted:
        assert 0.35 < np.mean(labels[alone]) < 0.65  # balanced, though 7 of 37 are class 1
    else:
        assert len(set(alone)) == 32  # a permutation
    assert alone != list(EpochSampler(len(labels), **{**common, "seed": 4}))


def test_validation_shares_cover_every_patch_once() -> None:
    shares = [list(EpochSampler(11, seed=0, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(11))


def test_cam_dump_shares_balance_patches_and_give_each_store_to_one_rank() -> None:
    sizes = [100, 10, 60, 50, 40, 5]
    shares = balanced_shares(sizes, 2)
    assert sorted(sum(shares, ())) == list(range(6))
    loads = [sum(sizes[i] for i in share) for share in shares]
    assert abs(loads[0] - loads[1]) <= 15
    assert balanced_shares(sizes, 2) == shares  # the same on every rank
    assert balanced_shares([3], 4)[1:] == ((), (), ())  # more ranks than stores


def test_global_batch_must_split_evenly_between_ranks() -> None:
    context = single_process(CPU).__class__(0, 3, 0, CPU)
    assert context.per_rank_batch(12) == 4
    with pytest.raises(ConfigError, match=r"batch_size=8 is not divisible by the 3"):
        context.per_rank_batch(8)


# real torchrun runs


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    """Loss trajectory, validation metrics, CAMs and final weights of all three stages."""
    config = tmp_path / "exact.yaml"
    config.write_text(yaml.safe_dump(EXACT))
    ddp_stores = _stores(tmp_path / "ddp_stores")
    run = _torchrun(_train_args(ddp_stores, tmp_path / "ddp", config), stderr=subprocess.PIPE)
    one = train(
        TrainConfig.model_validate(EXACT), _stores(tmp_path / "one_stores"), tmp_path / "one"
    )
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert "global batch 8 = 2 processes x 4 patches" in stderr
    one_rows, ddp_rows = _rows(tmp_path / "one"), _rows(tmp_path / "ddp")
    assert [(r["stage"], r["epoch"]) for r in ddp_rows] == [
        ("teacher", 1), ("teacher", 2), ("pixelcam", 1), ("pixelcam", 2)
    ]  # fmt: skip
    # rank 0 alone writes the log: each epoch once
    keys = ["loss", "image_loss", "pixel_loss", "train_accuracy", "val_accuracy", "val_pxap_pixel"]
    for a, b in zip(one_rows, ddp_rows, strict=True):
        assert a["seeds_fg"] == b["seeds_fg"] and a["seeds_bg"] == b["seeds_bg"]
        assert [b[k] for k in keys] == pytest.approx([a[k] for k in keys], rel=TOLERANCE)
    assert one_rows[2]["pixel_loss"] > 0  # the pixel term is part of what matches
    for store_one, store_ddp in zip(one.data.train_stores, _train_stores(tmp_path), strict=True):
        a = open_patch_store(store_one).group["cams"][...].astype(np.float32)
        b = open_patch_store(store_ddp).group["cams"][...].astype(np.float32)
        np.testing.assert_allclose(a, b, atol=1e-2)  # float16, from teachers equal to 1e-4
    for stage in ("teacher", "pixelcam"):
        a = load_checkpoint(tmp_path / "one" / stage / "last.pt")[0].state_dict()
        b = load_checkpoint(tmp_path / "ddp" / stage / "last.pt")[0].state_dict()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=TOLERANCE, atol=TOLERANCE)
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert Path(summary["model_path"]).is_file()


def _train_stores(root: Path) -> list[str]:
    split = json.loads((root / "ddp" / "split.json").read_text())
    return list(split["train_stores"])


def test_a_killed_rank_leaves_a_run_that_resumes_to_the_end(tmp_path: Path) -> None:
    settings = {**EXACT, "teacher": {"epochs": 3}, "pixelcam": {"epochs": 1}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    stores = _stores(tmp_path / "stores", n=24)
    out = tmp_path / "out"
    args = _train_args(stores, out, config)
    first = _torchrun(args, stderr=subprocess.DEVNULL)
    state = out / "teacher" / "state.pt"
    while not state.is_file() and first.poll() is None:  # epoch 1 is saved: kill in epoch 2
        time.sleep(0.02)
    rank1 = [p for p in psutil.Process(first.pid).children(recursive=True) if _rank(p) == "1"]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGKILL)
    assert first.wait(timeout=120) != 0  # torchrun reports the lost rank and stops the other
    assert not (out / "train_summary.json").exists()
    second = _torchrun(args, stderr=subprocess.PIPE)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["teacher"]["resumed_from"] >= 1
    assert [(r["stage"], r["epoch"]) for r in _rows(out)] == [
        *(("teacher", e) for e in (1, 2, 3)), ("pixelcam", 1)
    ]  # fmt: skip
    load_checkpoint(summary["model_path"])


def _rank(process: psutil.Process) -> str | None:
    try:
        return process.environ().get("RANK")
    except psutil.Error:
        return None
