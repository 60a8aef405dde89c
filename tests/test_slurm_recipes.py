"""The SLURM recipes in pipelines/slurm/ parse, and call commands with flags that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from wsi_pixelcam.cli import build_parser

SLURM = Path(__file__).resolve().parents[1] / "pipelines" / "slurm"


def _command(script: Path, start: str) -> list[str]:
    """The command line beginning with ``start``, continuations joined, each shell variable
    replaced by a placeholder word."""
    text = script.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith(start))
    return shlex.split(re.sub(r"\$\{?\w+\}?", "X", line))


@pytest.mark.parametrize("name", ["train_ddp.sbatch", "infer_dask_gpu.sbatch"])
def test_recipe_is_valid_bash(name: str) -> None:
    subprocess.run(["bash", "-n", str(SLURM / name)], check=True)


def test_training_recipe_uses_torchrun_and_train_flags_that_exist() -> None:
    from torch.distributed.run import get_args_parser

    command = _command(SLURM / "train_ddp.sbatch", "srun torchrun")
    assert command[:2] == ["srun", "torchrun"]
    launch = get_args_parser().parse_args(command[2:])
    assert (launch.module, launch.training_script) == (True, "wsi_pixelcam")
    assert (launch.rdzv_backend, launch.nnodes, launch.nproc_per_node) == ("c10d", "X", "X")
    args = build_parser().parse_args(launch.training_script_args)
    assert (args.command, args.device) == ("train", "cuda")


def test_inference_recipe_calls_infer_on_the_scheduler_file() -> None:
    command = _command(SLURM / "infer_dask_gpu.sbatch", "wsi-pixelcam infer")
    args = build_parser().parse_args(command[1:])
    assert (args.command, args.scheduler, args.recursive) == ("infer", "X", True)
    script = (SLURM / "infer_dask_gpu.sbatch").read_text()
    assert "write_scheduler_file(scheduler_file)" in script and '--gres=gpu:1"' in script
