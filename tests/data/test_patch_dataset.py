"""PatchDataset and the checks before training: class mapping, tiling, slide-level split."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from storegen import CLASSES, make_store, synthetic_patches
from torch.utils.data import DataLoader

from wsi_pixelcam.data.patch_dataset import (
    PatchDataset,
    check_tiling,
    class_counts,
    global_class_names,
    global_labels,
    read_store_info,
    split_by_slide,
)
from wsi_pixelcam.data.transforms import EvalTransform
from wsi_pixelcam.errors import DataError, TilingMismatchError
from wsi_pixelcam.store import open_patch_store

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("stores")
    return [
        make_store(root / "a.zarr", n=6, seed=1),
        # same classes in the other order: label 0 here is "tumour"
        make_store(
            root / "b.zarr", n=4, seed=2, classes=("tumour", "background"), labels=[0, 1, -1, 0]
        ),
    ]


def test_items_map_classes_by_name_and_read_the_stored_pixels(stores: list[Path]) -> None:
    infos = [read_store_info(p) for p in stores]
    classes = global_class_names(infos)
    assert classes == ("background", "tumour")
    dataset = PatchDataset(infos, classes, EvalTransform(32, MEAN, STD), with_mask=True)
    assert len(dataset) == 6 + 3  # the unlabelled patch of b is left out
    # b's local label 0 ("tumour") is global 1, its local 1 ("background") global 0
    assert dataset.labels[6:].tolist() == [1, 0, 1]
    assert global_labels(infos[1], classes).tolist() == [1, 0, -1, 1]
    _, _, masks = synthetic_patches(6, 32, seed=1)
    sample = dataset[3]
    assert sample["label"].item() == 1 and sample["index"].item() == 3
    restored = sample["image"] * torch.tensor(STD)[:, None, None] + 0.5
    stored = torch.from_numpy(open_patch_store(stores[0]).patches[3]).permute(2, 0, 1) / 255
    assert torch.allclose(restored, stored, atol=1e-6)
    assert torch.equal(sample["mask"], torch.from_numpy(masks[3]))


def test_pickled_dataset_holds_no_open_store(stores: list[Path]) -> None:
    infos = [read_store_info(p) for p in stores]
    dataset = PatchDataset(infos, ("background", "tumour"), EvalTransform(32, MEAN, STD))
    first = dataset[0]["image"]
    assert dataset._arrays  # opened on first use
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None
    assert torch.equal(clone[0]["image"], first)


def test_two_loader_workers_open_the_stores_themselves(stores: list[Path]) -> None:
    infos = [read_store_info(p) for p in stores]
    dataset = PatchDataset(infos, ("background", "tumour"), EvalTransform(32, MEAN, STD))
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    labels = torch.cat([batch["label"] for batch in loader])
    assert labels.tolist() == dataset.labels.tolist()
    assert dataset._arrays is None  # the parent never opened a store


def test_classes_outside_the_configured_list_are_refused(stores: list[Path]) -> None:
    infos = [read_store_info(p) for p in stores]
    with pytest.raises(DataError, match=r"class 'tumour' is not in data.classes"):
        global_class_names(infos, ["background", "normal"])


def test_a_class_spelled_in_another_case_is_the_same_class(tmp_path: Path) -> None:
    """``tumor`` from a manifest and ``Tumor`` from QuPath used to become two classes."""
    lower = make_store(tmp_path / "a.zarr", n=2, classes=("normal", "tumor"), labels=[0, 1])
    upper = make_store(tmp_path / "b.zarr", n=2, classes=("Normal", "Tumor"), labels=[1, 1])
    infos = [read_store_info(lower), read_store_info(upper)]
    names = global_class_names(infos)
    assert names == ("Tumor", "normal")  # one spelling each: the first in sorted order
    assert [global_labels(i, names).tolist() for i in infos] == [[1, 0], [0, 0]]
    configured = global_class_names(infos, ["NORMAL", "TUMOR"])
    assert [global_labels(i, configured).tolist() for i in infos] == [[0, 1], [1, 1]]


def test_store_without_labels_is_refused(tmp_path: Path) -> None:
    path = make_store(tmp_path / "u.zarr", n=3, labels=[-1, -1, -1])
    with pytest.raises(DataError, match=r"u.zarr: no labelled patch"):
        global_class_names([read_store_info(path)])


def test_tiling_mismatches_name_the_store_and_both_values(tmp_path: Path) -> None:
    a = read_store_info(make_store(tmp_path / "a.zarr", n=2, mpp=0.5))
    b = read_store_info(make_store(tmp_path / "b.zarr", n=2, mpp=1.0))
    c = read_store_info(make_store(tmp_path / "c.zarr", n=2, patch_px=48))
    near = read_store_info(make_store(tmp_path / "d.zarr", n=2, mpp=0.51))
    assert check_tiling([a, near]) == (0.5, 32)
    with pytest.raises(TilingMismatchError, match=r"b.zarr: patches are at 1 um/px but the first"):
        check_tiling([a, b])
    with pytest.raises(TilingMismatchError, match=r"c.zarr: patches are 48 px but the first .* 32"):
        check_tiling([a, c])
    with pytest.raises(TilingMismatchError, match=r"a.zarr: .* 0.5 um/px but the config .* 0.25"):
        check_tiling([a], mpp=0.25, patch_px=32)
    with pytest.raises(TilingMismatchError, match=r"a.zarr: patches are 32 px but the config"):
        check_tiling([a], patch_px=64)
    with pytest.raises(DataError, match="no patch stores"):
        check_tiling([])


def test_split_keeps_slides_whole_covers_classes_and_repeats() -> None:
    rng = np.random.default_rng(0)
    slide_ids = [f"s{i // 2}" for i in range(20)]  # two stores per slide
    labels = [rng.integers(0, 2, size=10) if i % 5 else np.zeros(10, int) for i in range(20)]
    split = split_by_slide(slide_ids, labels, 2, val_fraction=0.25, seed=3)
    train_slides = {slide_ids[i] for i in split.train}
    val_slides = {slide_ids[i] for i in split.val}
    assert not train_slides & val_slides
    assert sorted(split.train + split.val) == list(range(20))
    val_n = sum(len(labels[i]) for i in split.val)
    assert 0.15 <= val_n / 200 <= 0.35
    for side in (split.train, split.val):
        counts = np.sum([class_counts(labels[i], 2) for i in side], axis=0)
        assert (counts > 0).all()
    assert split_by_slide(slide_ids, labels, 2, 0.25, seed=3) == split
    assert split_by_slide(slide_ids, labels, 2, 0.25, seed=4) != split


def test_split_needs_two_slides_unless_validation_is_off() -> None:
    labels = [np.array([0, 1])]
    with pytest.raises(DataError, match=r"only one slide \(s\)"):
        split_by_slide(["s"], labels, 2, 0.2, seed=0)
    assert split_by_slide(["s"], labels, 2, 0.0, seed=0).val == ()


def _replace_masks(path: Path, masks: np.ndarray) -> None:
    group = zarr.open_group(path, mode="r+")
    group.create_array("masks", shape=masks.shape, dtype="uint8", overwrite=True)[...] = masks


def test_masks_of_other_sizes_are_served_at_the_largest(tmp_path: Path) -> None:
    big = make_store(tmp_path / "big.zarr", n=4, seed=1)
    small = make_store(tmp_path / "small.zarr", n=4, seed=2)
    _, _, masks = synthetic_patches(4, 32, seed=2)
    halved = np.stack(masks)[:, ::2, ::2]  # as a store tiled with 16 px masks
    _replace_masks(small, halved)
    infos = [read_store_info(p) for p in (big, small)]
    assert [i.mask_px for i in infos] == [32, 16]
    dataset = PatchDataset(infos, CLASSES, EvalTransform(32, MEAN, STD), with_mask=True)
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))  # one size: they stack
    assert batch["mask"].shape == (8, 32, 32)
    served = dataset[5]["mask"].numpy()  # small.zarr's second patch
    index = int(dataset.items[5, 1])
    assert int(dataset.items[5, 0]) == 1 and halved[index].any()
    np.testing.assert_array_equal(served, halved[index].repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.parametrize("shape", [(5, 32, 32), (4, 32, 16), (4, 32)])
def test_masks_that_do_not_fit_the_patches_name_the_store(tmp_path: Path, shape) -> None:
    path = make_store(tmp_path / "bad.zarr", n=4)
    _replace_masks(path, np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=r"bad.zarr: its masks array .* does not fit its 4 patches"):
        read_store_info(path)
