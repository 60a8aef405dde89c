"""Standard WSOL datasets turned into patch stores with a ``masks`` array.

Two layouts are read, so the paper's protocol runs through the same ``train``/``eval`` as
slides do:

* **GlaS** (Warwick QU, MICCAI 2015): a folder of ``<name>.bmp`` images with ``<name>_anno.bmp``
  gland masks (instance ids, 0 = background) and ``Grade.csv`` (name, patient ID, GlaS grade
  benign/malignant). One store per (split, patient), split being the name's prefix (``train``,
  ``testA``, ``testB``), so a slide-level validation split never separates a patient.
* **WSOL "done right"** (Choe et al., CVPR 2020), as the PixelCAM authors lay out GlaS and
  CAMELYON16 patches: ``<metadata>/<split>/image_ids.txt`` (one image path per line),
  ``class_labels.txt`` (``path,label``) and ``localization.txt`` (``path,mask_path[,ignore]``,
  several lines for several masks of one image), paths relative to a data root. One store
  per split.

Images are resized to ``patch_px`` square (bilinear; masks nearest), as the WSOL protocol
resizes whole images; the stores record the mpp as unknown unless one is given. Each store
describes its images as one virtual slide, side by side (see :mod:`wsi_pixelcam.store.meta`).
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image
from zarr.codecs import ZstdCodec

from wsi_pixelcam import __version__
from wsi_pixelcam.errors import DataError
from wsi_pixelcam.store import PatchStoreWriter
from wsi_pixelcam.store.meta import image_strip_meta

logger = logging.getLogger(__name__)

GLAS_CLASSES = ("benign", "malignant")


@dataclass(frozen=True)
class LabelledImage:
    """One source image: where it is, its class index, its mask files (may be none)."""

    image: Path
    label: int
    masks: tuple[Path, ...]


def write_image_store(
    path: str | Path,
    images: Iterable[np.ndarray],
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    masks: Iterable[np.ndarray] | None = None,
    slide_id: str | None = None,
    mpp: float | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write square uint8 RGB ``images`` (all P x P, one per label) as a complete patch store.

    ``masks`` (P x P, fg = value > 0) become a ``masks`` (N, P, P) uint8 array of 0/1.
    ``labels`` index ``class_names``. Images and masks are consumed one at a time (any
    iterable), so a large dataset never sits in memory. Written under a temporary name and
    renamed into place.
    """
    path = Path(path)
    n = len(labels)
    image_iter = iter(images)
    first = next(image_iter, None)
    if first is None or n == 0:
        raise DataError(f"{path}: no images to write")
    patch_px = int(first.shape[0])
    writer = PatchStoreWriter(path, patch_px=patch_px, capacity=n, jpeg_quality=90)
    try:
        mask_array = None
        if masks is not None:
            mask_array = zarr.open_group(writer.tmp_path, mode="r+").create_array(
                "masks",
                shape=(n, patch_px, patch_px),
                chunks=(min(64, n), patch_px, patch_px),
                dtype="uint8",
                compressors=ZstdCodec(level=3),
            )
        mask_iter = iter(masks) if masks is not None else None
        block: list[np.ndarray] = []
        for index, image in enumerate(itertools.chain([first], image_iter)):
            if image.shape != (patch_px, patch_px, 3) or image.dtype != np.uint8:
                raise DataError(
                    f"{path}: image {index} is {image.dtype} {image.shape}, expected uint8 "
                    f"({patch_px}, {patch_px}, 3)"
                )
            writer.append(image, (index * patch_px, 0), 1.0)
            if mask_iter is not None and mask_array is not None:
                block.append(np.asarray(next(mask_iter)) > 0)
                if len(block) == 64 or index == n - 1:
                    mask_array[index + 1 - len(block) : index + 1] = np.stack(block)
                    block.clear()
        if writer.count != n:
            raise DataError(f"{path}: {writer.count} images for {n} labels")
        meta = image_strip_meta(
            slide_id=slide_id or path.stem,
            source=str((source or {}).get("root", "")),
            n_patches=n,
            patch_px=patch_px,
            mpp=mpp,
            classes=tuple(class_names),
            label_source=source or {"kind": "dataset"},
            versions={"wsi-pixelcam": __version__},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        return writer.finalize(meta, labels=np.asarray(labels, dtype=np.int16))
    except BaseException:
        writer.abort()
        raise


def _load_rgb(path: Path, patch_px: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((patch_px, patch_px), Image.Resampling.BILINEAR)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8)


def _load_mask(paths: Iterable[Path], patch_px: int) -> np.ndarray:
    mask = np.zeros((patch_px, patch_px), dtype=bool)
    for path in paths:
        try:
            with Image.open(path) as img:
                small = img.convert("L").resize((patch_px, patch_px), Image.Resampling.NEAREST)
        except OSError as exc:
            raise DataError(f"{path}: cannot read the mask ({exc})") from exc
        mask |= np.asarray(small) > 0
    return mask.astype(np.uint8)


def _write_group(
    path: Path,
    items: Sequence[LabelledImage],
    class_names: Sequence[str],
    patch_px: int,
    slide_id: str,
    mpp: float | None,
    source: dict[str, Any],
) -> Path:
    with_masks = any(item.masks for item in items)
    return write_image_store(
        path,
        (_load_rgb(item.image, patch_px) for item in items),
        [item.label for item in items],
        class_names,
        masks=(_load_mask(item.masks, patch_px) for item in items) if with_masks else None,
        slide_id=slide_id,
        mpp=mpp,
        source=source,
    )


def read_glas(root: str | Path) -> dict[str, list[LabelledImage]]:
    """GlaS images grouped by store id ``glas-<split>-p<patient>``, labels 0 benign 1 malignant."""
    root = Path(root)
    grades = root / "Grade.csv"
    if not grades.is_file():
        raise DataError(f"{root}: no Grade.csv; point to the GlaS folder (train_1.bmp, ...)")
    with grades.open(newline="") as stream:
        rows = list(csv.reader(stream))
    if len(rows) < 2:
        raise DataError(f"{grades}: no rows")
    header = [h.strip().lower() for h in rows[0]]
    try:
        name_col = next(i for i, h in enumerate(header) if "name" in h)
        patient_col = next(i for i, h in enumerate(header) if "patient" in h)
        grade_col = next(i for i, h in enumerate(header) if "glas" in h or h == "grade")
    except StopIteration as exc:
        raise DataError(
            f"{grades}: expected columns name, Patient ID, grade (GlaS); found {rows[0]}"
        ) from exc
    groups: dict[str, list[LabelledImage]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        name, patient, grade = (row[c].strip() for c in (name_col, patient_col, grade_col))
        if grade.lower() not in GLAS_CLASSES:
            raise DataError(f"{grades}:{line}: grade {grade!r} is not benign or malignant")
        image, mask = root / f"{name}.bmp", root / f"{name}_anno.bmp"
        for needed in (image, mask):
            if not needed.is_file():
                raise DataError(f"{needed}: listed in {grades} but missing")
        split = name.rsplit("_", 1)[0]
        groups.setdefault(f"glas-{split}-p{patient}", []).append(
            LabelledImage(image, GLAS_CLASSES.index(grade.lower()), (mask,))
        )
    return groups


def glas_to_stores(
    root: str | Path, out_dir: str | Path, *, patch_px: int = 256, mpp: float | None = None
) -> list[Path]:
    """Write one store per GlaS (split, patient) into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _write_group(
            out / f"{store_id}.zarr",
            items,
            GLAS_CLASSES,
            patch_px,
            store_id,
            mpp,
            {"kind": "glas", "root": str(root)},
        )
        for store_id, items in sorted(read_glas(root).items())
    ]


def read_wsol_split(metadata_dir: str | Path, data_root: str | Path) -> list[LabelledImage]:
    """One split of the WSOL layout (``image_ids.txt``, ``class_labels.txt``, ``localization.txt``).

    ``localization.txt`` is optional (then no masks); box annotations are refused.
    """
    meta, data = Path(metadata_dir), Path(data_root)
    ids_file, labels_file = meta / "image_ids.txt", meta / "class_labels.txt"
    for needed in (ids_file, labels_file):
        if not needed.is_file():
            raise DataError(
                f"{needed}: missing; a WSOL split has image_ids.txt and class_labels.txt"
            )
    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    labels: dict[str, int] = {}
    for line, fields in _csv_lines(labels_file):
        if len(fields) != 2 or not fields[1].strip().lstrip("-").isdigit():
            raise DataError(f"{labels_file}:{line}: expected 'image_path,label'")
        labels[fields[0].strip()] = int(fields[1])
    masks: dict[str, list[Path]] = {}
    loc_file = meta / "localization.txt"
    if loc_file.is_file():
        for line, fields in _csv_lines(loc_file):
            if len(fields) == 5 and all(_is_number(f) for f in fields[1:]):
                raise DataError(
                    f"{loc_file}:{line}: bounding boxes; PxAP needs pixel masks "
                    "('image_path,mask_path')"
                )
            if len(fields) < 2 or not fields[1].strip():
                raise DataError(f"{loc_file}:{line}: expected 'image_path,mask_path[,ignore]'")
            masks.setdefault(fields[0].strip(), []).append(data / fields[1].strip())
    items = []
    for image_id in ids:
        if image_id not in labels:
            raise DataError(f"{labels_file}: no label for {image_id}")
        if masks and image_id not in masks:
            raise DataError(f"{loc_file}: no mask line for {image_id}")
        image = data / image_id
        if not image.is_file():
            raise DataError(f"{image}: listed in {ids_file} but missing under {data}")
        items.append(LabelledImage(image, labels[image_id], tuple(masks.get(image_id, ()))))
    return items


def wsol_to_stores(
    metadata_root: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    name: str = "wsol",
    class_names: Sequence[str] | None = None,
    patch_px: int = 256,
    mpp: float | None = None,
) -> list[Path]:
    """Write one store ``<name>-<split>.zarr`` per split folder under ``metadata_root``.

    ``class_names`` name the integer labels (default "0", "1", ...); for the paper's data
    use ("benign", "malignant") for GlaS and ("normal", "tumor") for CAMELYON16.
    """
    root = Path(metadata_root)
    splits = sorted(p for p in root.iterdir() if (p / "image_ids.txt").is_file())
    if not splits:
        raise DataError(f"{root}: no <split>/image_ids.txt below; point to the metadata folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits:
        items = read_wsol_split(split, data_root)
        n_classes = max(item.label for item in items) + 1
        names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
        if n_classes > len(names) or min(item.label for item in items) < 0:
            raise DataError(f"{split}: labels outside 0..{len(names) - 1} ({names})")
        store_id = f"{name}-{split.name}"
        written.append(
            _write_group(
                out / f"{store_id}.zarr",
                items,
                names,
                patch_px,
                store_id,
                mpp,
                {"kind": "wsol", "metadata": str(split), "data_root": str(data_root)},
            )
        )
    return written


def _csv_lines(path: Path) -> list[tuple[int, list[str]]]:
    with path.open(newline="") as stream:
        return [(i, row) for i, row in enumerate(csv.reader(stream), start=1) if row]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
