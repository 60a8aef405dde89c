"""GlaS and WSOL-layout readers: tiny fake datasets in those layouts become patch stores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_pixelcam.data.patch_dataset import read_store_info
from wsi_pixelcam.errors import DataError
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.training.datasets import glas_to_stores, write_image_store, wsol_to_stores


def _image(path: Path, seed: int, size: tuple[int, int] = (60, 40)) -> np.ndarray:
    """A smooth colour gradient (JPEG keeps it close), different per seed."""
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([xx * 200 / size[0], yy * 200 / size[1], np.full(xx.shape, 20 * seed)], -1)
    rgb = rgb.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def _mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (60, 40)) -> None:
    """Instance-id mask (gland 3 in ``box``), as GlaS stores them."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 3
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


@pytest.fixture
def glas(tmp_path: Path) -> Path:
    root = tmp_path / "glas"
    rows = [
        ("train_1", 1, "benign"),
        ("train_2", 1, " malignant"),
        ("train_3", 2, "malignant"),
        ("testA_1", 5, "benign"),
    ]
    for index, (name, _, _) in enumerate(rows):
        _image(root / f"{name}.bmp", index)
        _mask(root / f"{name}_anno.bmp", (0, 0, 30, 40))  # left half of a 60 x 40 image
    lines = ["name,Patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)"]
    lines += [f"{n}, {p},{g}, adenomatous" for n, p, g in rows]
    (root / "Grade.csv").write_text("\n".join(lines) + "\n")
    return root


def test_glas_becomes_one_store_per_split_and_patient(glas: Path, tmp_path: Path) -> None:
    paths = glas_to_stores(glas, tmp_path / "stores", patch_px=32)
    assert [p.name for p in paths] == [
        "glas-testA-p5.zarr", "glas-train-p1.zarr", "glas-train-p2.zarr"
    ]  # fmt: skip
    info = read_store_info(paths[1])
    assert info.slide_id == "glas-train-p1" and info.classes == ("benign", "malignant")
    assert info.labels.tolist() == [0, 1] and info.patch_px == 32 and info.has_masks
    assert info.mpp is None  # resized whole images: no physical scale
    store = open_patch_store(paths[1])
    masks = store.group["masks"][...]
    assert masks.shape == (2, 32, 32) and set(np.unique(masks)) == {0, 1}
    assert masks[:, :, :16].all() and not masks[:, :, 16:].any()  # the left half, resized
    assert store.patches.shape == (2, 32, 32, 3)


def test_glas_errors_name_the_file(glas: Path, tmp_path: Path) -> None:
    (glas / "train_3_anno.bmp").unlink()
    with pytest.raises(DataError, match=r"train_3_anno.bmp: listed in .*Grade.csv but missing"):
        glas_to_stores(glas, tmp_path / "out")
    with pytest.raises(DataError, match=r"no Grade.csv"):
        glas_to_stores(tmp_path, tmp_path / "out")
    (glas / "Grade.csv").write_text("name,Patient ID,grade (GlaS)\ntrain_1,1,unknown\n")
    with pytest.raises(DataError, match=r"Grade.csv:2: grade 'unknown'"):
        glas_to_stores(glas, tmp_path / "out")


def _wsol(tmp_path: Path) -> tuple[Path, Path]:
    data, meta = tmp_path / "data", tmp_path / "metadata"
    for split, names in (("train", ["a", "b", "c"]), ("test", ["d", "e"])):
        (meta / split).mkdir(parents=True)
        ids, labels, loc = [], [], []
        for index, name in enumerate(names):
            _image(data / split / f"{name}.png", index, (40, 40))
            _mask(data / "masks" / f"{name}_1.png", (0, 0, 20, 40), (40, 40))
            ids.append(f"{split}/{name}.png")
            labels.append(f"{split}/{name}.png,{index % 2}")
            loc.append(f"{split}/{name}.png,masks/{name}_1.png,")
        # a second mask for the first image: the right half; masks of one image are unioned
        _mask(data / "masks" / f"{names[0]}_2.png", (20, 0, 40, 40), (40, 40))
        loc.append(f"{split}/{names[0]}.png,masks/{names[0]}_2.png,")
        (meta / split / "image_ids.txt").write_text("\n".join(ids) + "\n")
        (meta / split / "class_labels.txt").write_text("\n".join(labels) + "\n")
        (meta / split / "localization.txt").write_text("\n".join(loc) + "\n")
    return meta, data


def test_wsol_layout_becomes_one_store_per_split(tmp_path: Path) -> None:
    meta, data = _wsol(tmp_path)
    paths = wsol_to_stores(
        meta, data, tmp_path / "stores", name="camelyon", class_names=("normal", "tumor"),
        patch_px=40,
    )  # fmt: skip
    assert [p.name for p in paths] == ["camelyon-test.zarr", "camelyon-train.zarr"]
    train = open_patch_store(paths[1])
    assert train.labels.tolist() == [0, 1, 0] and train.classes == ["normal", "tumor"]
    masks = train.group["masks"][...]
    assert masks[0].all()  # both halves
    assert masks[1][:, :20].all() and not masks[1][:, 20:].any()
    expected = np.asarray(Image.open(data / "train" / "b.png"))
    assert np.abs(train.patches[1].astype(int) - expected).mean() < 4  # JPEG-close


def test_wsol_layout_errors(tmp_path: Path) -> None:
    meta, data = _wsol(tmp_path)
    (meta / "test" / "localization.txt").write_text("test/d.png,1,2,30,30\n")
    with pytest.raises(DataError, match=r"localization.txt:1: bounding boxes"):
        wsol_to_stores(meta, data, tmp_path / "out")
    (meta / "test" / "localization.txt").unlink()
    (meta / "test" / "class_labels.txt").write_text("test/d.png,0\n")
    with pytest.raises(DataError, match=r"no label for test/e.png"):
        wsol_to_stores(meta, data, tmp_path / "out")
    with pytest.raises(DataError, match=r"no <split>/image_ids.txt"):
        wsol_to_stores(data, data, tmp_path / "out")


def test_write_image_store_checks_its_input(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(DataError, match="image 1 is uint8 \\(8, 8, 3\\)"):
        write_image_store(tmp_path / "x.zarr", [image, image[:8, :8]], [0, 1], ("a", "b"))
    assert not list(tmp_path.iterdir())  # the temporary store was removed
    with pytest.raises(DataError, match="1 images for 2 labels"):
        write_image_store(tmp_path / "x.zarr", [image], [0, 1], ("a", "b"))
