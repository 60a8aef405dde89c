"""Torch dataset over patch stores, with the checks training needs before it starts.

Store paths cross into DataLoader workers, never open stores: each worker opens the zarr
arrays it reads on first use (zarr's event loop and file handles do not survive pickling or
fork well). Each store's class names are mapped onto one global class list by name, so stores
labelled with different or differently ordered classes train together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from wsi_pixelcam.data.transforms import Transform
from wsi_pixelcam.errors import DataError
from wsi_pixelcam.labels import UNLABELLED, class_index, spellings
from wsi_pixelcam.store import PatchStore, PatchStoreMeta, open_patch_store
from wsi_pixelcam.store.damaged_chunks import read_rows_together


@dataclass(frozen=True)
class StoreInfo:
    """What training needs to know about one patch store, read once in the main process."""

    path: Path
    meta: PatchStoreMeta
    labels: np.ndarray  # (N,) int16 in the store's own class order, -1 unlabelled
    mask_px: int | None  # side of the stored ROI masks, None without masks
    cams: dict[str, Any] | None  # the store's record of its "cams" array, if a dump was started

    @property
    def slide_id(self) -> str:
        return self.meta.slide_id

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.labels.classes

    @property
    def mpp(self) -> float | None:
        return self.meta.patch_mpp

    @property
    def patch_px(self) -> int:
        return self.meta.tiling.patch_px

    @property
    def n_patches(self) -> int:
        return len(self.labels)

    @property
    def has_masks(self) -> bool:
        return self.mask_px is not None


def read_store_info(path: str | Path) -> StoreInfo:
    """Open ``path`` briefly and summarise it; StoreError if it is not a complete store,
    DataError if its masks do not fit its patches."""
    store = open_patch_store(path)
    return StoreInfo(
        path=store.path,
        meta=store.meta,
        labels=store.labels,
        mask_px=_mask_px(store),
        cams=store.derived_record("cams"),
    )


def _mask_px(store: PatchStore) -> int | None:
    """The side M of the store's (N, M, M) masks; any M fits, since masks are compared with
    maps at the evaluation size."""
    masks = store.group.get("masks")
    if not isinstance(masks, zarr.Array):
        return None
    shape = tuple(masks.shape)
    if len(shape) != 3 or shape[0] != len(store) or shape[1] != shape[2] or shape[1] < 1:
        raise DataError(
            f"{store.path}: its masks array {shape} does not fit its {len(store)} patches "
            "(expected (N, M, M) masks); re-tile it or re-add masks with eval --annotations"
        )
    return int(shape[1])


def check_tiling(
    infos: Sequence[StoreInfo],
    *,
    mpp: float | None = None,
    patch_px: int | None = None,
    tolerance: float = 0.05,
    reference: str = "the config",
) -> tuple[float | None, int]:
    """The stores' common (mpp, patch_px); TilingMismatchError naming the first store that
    differs (:meth:`PatchStoreMeta.check_fits`, the check eval and infer make too).

    ``mpp``/``patch_px`` given (by ``reference``: the config, a model) must match too;
    otherwise the first store is the reference.
    """
    if not infos:
        raise DataError("no patch stores given; pass the .zarr stores written by `tile`")
    first = infos[0]
    first_text = f"the first store ({first.path})"
    want_px = first.patch_px if patch_px is None else patch_px
    want_mpp = first.mpp if mpp is None else mpp
    for info in infos:
        # size, then resolution, each against whoever set it: the reference or the first store
        info.meta.check_fits(
            patch_px=want_px, mpp=info.mpp, tolerance=tolerance, where=info.path,
            reference=first_text if patch_px is None else reference,
        )  # fmt: skip
        info.meta.check_fits(
            patch_px=info.patch_px, mpp=want_mpp, tolerance=tolerance, where=info.path,
            reference=first_text if mpp is None else reference,
        )  # fmt: skip
    return want_mpp, want_px


def global_class_names(
    infos: Sequence[StoreInfo], classes: Sequence[str] | None = None
) -> tuple[str, ...]:
    """One class list for all stores: ``classes`` if given, else the sorted union.

    Sorting makes class indices independent of the order the stores are listed in.

    Only classes some patch is labelled with count, so an unused name in one store's list
    does not become a class nothing trains. DataError for a store without labels or a class
    outside ``classes``.
    """
    used_names: list[tuple[StoreInfo, str]] = []
    for info in infos:
        used = sorted(set(info.labels[info.labels >= 0].tolist()))
        if not used:
            raise DataError(
                f"{info.path}: no labelled patch (all labels are -1); re-tile it with labels "
                "(tile --annotations DIR, --labels-csv FILE, or a 'label' column in the "
                "--manifest) or leave it out"
            )
        if max(used) >= len(info.classes):
            raise DataError(
                f"{info.path}: label {max(used)} but only {len(info.classes)} class names "
                "in its attrs; re-tile it"
            )
        used_names += [(info, info.classes[index]) for index in used]
    # names equal but for case are one class, spelled as data.classes does if it lists it
    spelled = spellings([name for _, name in used_names], classes or (), "the stores")
    names: list[str] = list(classes) if classes is not None else []
    for info, name in used_names:
        if spelled[name] in names:
            continue
        if classes is not None:
            raise DataError(
                f"{info.path}: class {name!r} is not in data.classes {list(classes)}; "
                "add it or leave the store out"
            )
        names.append(spelled[name])
    return tuple(names) if classes is not None else tuple(sorted(names))


def global_labels(info: StoreInfo, class_names: Sequence[str]) -> np.ndarray:
    """The store's labels as indices into ``class_names``, matched ignoring case (int64; -1
    stays unlabelled)."""
    lookup = np.array([class_index(class_names, c) for c in info.classes] + [-1], dtype=np.int64)
    labels = info.labels.astype(np.int64)
    return np.where(labels >= 0, lookup[labels], UNLABELLED)


def class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    """Patches per class (unlabelled ones not counted)."""
    return np.bincount(labels[labels >= 0], minlength=n_classes)[:n_classes].tolist()


@dataclass(frozen=True)
class SlideSplit:
    """Stores (by index into the list given) on each side of a slide-level split."""

    train: tuple[int, ...]
    val: tuple[int, ...]


def split_by_slide(
    slide_ids: Sequence[str],
    labels: Sequence[np.ndarray],
    n_classes: int,
    val_fraction: float,
    seed: int,
    tries: int = 200,
) -> SlideSplit:
    """Split stores so no slide has patches on both sides; every class on both where possible.

    Stores of the same slide id go together. Among ``tries`` seeded shuffles, each filled
    greedily up to ``val_fraction`` of the labelled patches, the split that misses the fewest
    classes (train first) and comes closest to the fraction wins. Deterministic in ``seed``.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction}: must be in [0, 1)")
    groups: dict[str, list[int]] = {}
    for index, slide in enumerate(slide_ids):
        groups.setdefault(slide, []).append(index)
    if val_fraction == 0:
        return SlideSplit(tuple(range(len(slide_ids))), ())
    if len(groups) < 2:
        raise DataError(
            f"only one slide ({next(iter(groups), '?')}): a validation split by slide needs "
            "at least two; add slides, pass validation stores, or set data.val_fraction: 0"
        )
    slides = list(groups)
    counts = {
        s: np.sum([class_counts(labels[i], n_classes) for i in groups[s]], axis=0) for s in slides
    }
    total = float(sum(c.sum() for c in counts.values()))
    rng = np.random.default_rng(seed)
    best: tuple[tuple[int, int, float], list[str]] | None = None
    for _ in range(tries):
        order = [slides[i] for i in rng.permutation(len(slides))]
        val: list[str] = []
        val_n = 0.0
        for slide in order[:-1]:  # at least one slide stays in train
            if val and val_n + counts[slide].sum() / 2 > val_fraction * total:
                break
            val.append(slide)
            val_n += counts[slide].sum()
        val_counts = np.sum([counts[s] for s in val], axis=0)
        train_counts = np.sum([counts[s] for s in slides if s not in val], axis=0)
        score = (
            int((train_counts == 0).sum()),
            int((val_counts == 0).sum()),
            abs(val_n / total - val_fraction),
        )
        if best is None or score < best[0]:
            best = (score, val)
    assert best is not None
    val_set = set(best[1])
    return SlideSplit(
        tuple(i for i, s in enumerate(slide_ids) if s not in val_set),
        tuple(i for i, s in enumerate(slide_ids) if s in val_set),
    )


class PatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Patches of several stores as one dataset of dicts of tensors.

    Each item: ``image`` (3, H, W) float, ``label`` (int64, -1 unlabelled), ``index`` (the
    item's position here; ``items[index]`` is (store, patch)), and with ``with_cam`` the
    stored teacher ``cam`` (after the transform), with ``with_mask`` the pixel ``mask``
    (M, M) uint8, M the largest mask side among the stores (smaller ones resized nearest, so
    any batch stacks). ``labelled_only`` drops unlabelled patches.
    """

    def __init__(
        self,
        stores: Sequence[StoreInfo],
        class_names: Sequence[str],
        transform: Transform,
        *,
        labelled_only: bool = True,
        with_cam: bool = False,
        with_mask: bool = False,
    ) -> None:
        self.paths = tuple(info.path for info in stores)
        self.class_names = tuple(class_names)
        self.transform = transform
        self.with_cam = with_cam
        self.with_mask = with_mask
        self.mask_px = max((info.mask_px or 0 for info in stores), default=0)
        for info in stores:
            if with_mask and not info.has_masks:
                raise DataError(f"{info.path}: no 'masks' array; pixel masks are needed here")
            if with_cam and not (info.cams or {}).get("complete"):
                raise DataError(
                    f"{info.path}: no complete teacher CAMs; run the 'cams' stage first"
                )
        items, labels = [], []
        for store_index, info in enumerate(stores):
            store_labels = global_labels(info, self.class_names)
            keep = (
                np.flatnonzero(store_labels >= 0) if labelled_only else np.arange(len(info.labels))
            )
            items.append(np.stack([np.full(len(keep), store_index), keep], axis=1))
            labels.append(store_labels[keep])
        self.items = np.concatenate(items) if items else np.zeros((0, 2), np.int64)
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._arrays: dict[int, dict[str, zarr.Array]] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None  # workers reopen: open zarr arrays never cross processes
        return state

    def _open(self, store_index: int) -> dict[str, zarr.Array]:
        if self._arrays is None:
            self._arrays = {}
        arrays = self._arrays.get(store_index)
        if arrays is None:
            group = open_patch_store(self.paths[store_index]).group
            names = ["patches"] + ["cams"] * self.with_cam + ["masks"] * self.with_mask
            arrays = {name: group[name] for name in names}  # type: ignore[misc]
            self._arrays[store_index] = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """The samples of a batch (the DataLoader asks for a whole batch when this exists),
        their patches, CAMs and masks read together (see read_rows_together)."""
        names = ["patches"] + ["cams"] * self.with_cam + ["masks"] * self.with_mask
        requests = []
        for index in indices:
            store_index, patch_index = (int(v) for v in self.items[index])
            arrays = self._open(store_index)
            requests += [(arrays[name], patch_index, self.paths[store_index]) for name in names]
        rows = read_rows_together(requests)
        per_sample = len(names)
        return [
            self._sample(int(index), rows[i * per_sample : (i + 1) * per_sample])
            for i, index in enumerate(indices)
        ]

    def _sample(self, index: int, rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """One sample from its rows: the patch, then its CAM and mask where asked for."""
        patch, *rest = rows
        cam = rest.pop(0) if self.with_cam else None
        image, out_cam = self.transform(patch, cam)
        sample = {
            "image": image,
            "label": torch.tensor(int(self.labels[index])),
            "index": torch.tensor(index),
        }
        if out_cam is not None:
            sample["cam"] = out_cam
        if self.with_mask:
            sample["mask"] = torch.from_numpy(_nearest(rest.pop(0), self.mask_px))
        return sample


def _nearest(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` resized to (px, px) by nearest neighbour (pixel centres aligned)."""
    if mask.shape == (px, px):
        return mask
    rows = ((np.arange(px) + 0.5) * mask.shape[0] / px).astype(np.int64)
    cols = ((np.arange(px) + 0.5) * mask.shape[1] / px).astype(np.int64)
    return np.ascontiguousarray(mask[rows[:, None], cols[None, :]])
