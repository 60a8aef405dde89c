"""``PatchStoreMeta``: the typed, self-validating description of a patch store.

Tiling writes it, ``write_image_store`` writes it, training, evaluation and inference read it;
no other module reads store attrs by key. It is validated whenever a store is opened, so a
missing or hand-edited field is one error naming the store and the field, not a ``KeyError``
three stages later. Stores of schema 1 are migrated on read; newer ones are refused.

A store cut from images (a WSOL dataset) describes a virtual slide: its patches side by side
in one row at level 0, ``backend: images``. Every store then has the same geometry fields, and
the same code places its maps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wsi_pixelcam.errors import StoreError, TilingMismatchError

SCHEMA = "wsi-pixelcam.patch-store"
SCHEMA_VERSION = 2
IMAGES_BACKEND = "images"
"""``slide.backend`` of a store written from separate images rather than cut from a slide."""

RETILE_HINT = "re-tile the slide with `wsi-pixelcam tile --overwrite`"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SlideSection(_Section):
    """The slide the patches were cut from, and how it was identified and opened."""

    path: str
    name: str
    dimensions_level0: tuple[int, int]
    bounds_offset: tuple[int, int] = (0, 0)
    backend: str
    backend_version: str = ""
    backend_reason: str = ""
    size_bytes: int = Field(default=0, ge=0)
    content_hash: str = ""
    hash_method: str = ""
    level_dimensions: tuple[tuple[int, int], ...] = ()
    level_downsamples: tuple[float, ...] = ()


class MppSection(_Section):
    """Level-0 microns per pixel and where the value came from."""

    value: float = Field(gt=0)
    x: float = Field(gt=0)
    y: float = Field(gt=0)
    source: str
    estimated: bool = False


class TilingSection(_Section):
    """How the patches were cut: sizes in target pixels and in level-0 pixels."""

    patch_px: int = Field(gt=0)
    stride_px: int = Field(gt=0)
    effective_mpp: float | None = Field(default=None, gt=0)
    target_mpp: float | None = Field(default=None, gt=0)
    patch_level0: float = Field(gt=0)
    stride_level0: float = Field(gt=0)
    read_level: int = Field(default=0, ge=0)
    read_level_downsample: float = Field(default=1.0, gt=0)
    resize_factor: float = Field(default=1.0, gt=0)
    min_tissue_frac: float = Field(default=0.0, ge=0, le=1)
    n_candidates: int = Field(default=0, ge=0)
    n_bad_patches: int = Field(default=0, ge=0)
    bad_patch_xy_level0: tuple[tuple[int, int], ...] = ()
    order: str = ""


class TissueSection(BaseModel):
    """The tissue-detection settings used (free-form) and the thumbnail's scale."""

    model_config = ConfigDict(frozen=True, extra="allow")
    thumbnail_level0_per_px: float = Field(gt=0)


class LabelsSection(_Section):
    """Class names the ``labels`` array indexes, where the labels came from, and the rule."""

    classes: tuple[str, ...] = ()
    source: dict[str, Any] = Field(default_factory=dict)
    rule: dict[str, Any] | None = None


class PatchStoreMeta(_Section):
    """Everything a store's attrs say, except records of arrays added later (``cams``,
    ``masks``: see :mod:`wsi_pixelcam.store.patch_store`)."""

    slide_id: str = Field(min_length=1)
    n_patches: int = Field(ge=0)
    slide: SlideSection
    mpp: MppSection | None
    tiling: TilingSection
    labels: LabelsSection = LabelsSection()
    tissue: TissueSection | None = None
    store: dict[str, Any] = Field(default_factory=dict)
    qc: dict[str, Any] | None = None
    requested: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    created: str | None = None

    @property
    def mpp_level0(self) -> float | None:
        return None if self.mpp is None else self.mpp.value

    @property
    def patch_mpp(self) -> float | None:
        """Microns per pixel of the stored patches (None: unknown)."""
        return self.tiling.effective_mpp

    @property
    def from_images(self) -> bool:
        return self.slide.backend == IMAGES_BACKEND

    def to_attrs(self) -> dict[str, Any]:
        """JSON-safe attrs, ``schema`` and ``schema_version`` included (``complete`` is the
        writer's to set, last)."""
        return {
            **self.model_dump(mode="json"),
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: object) -> PatchStoreMeta:
        """Validate ``attrs`` (migrating schema 1); StoreError naming ``where`` and the field."""
        if attrs.get("schema") != SCHEMA:
            raise StoreError(f"{where}: not a wsi-pixelcam patch store")
        version = attrs.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: patch store schema {version} was written by a newer wsi-pixelcam "
                f"(this one reads up to {SCHEMA_VERSION}); upgrade wsi-pixelcam"
            )
        if version == 1:
            attrs = _migrate_v1(attrs)
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{where}: patch store schema_version {version!r} is not one this version "
                f"reads (1-{SCHEMA_VERSION}); {RETILE_HINT}"
            )
        known = {k: v for k, v in attrs.items() if k in cls.model_fields}
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            raise StoreError(
                f"{where}: {_first_problem(exc)} in its attrs; {RETILE_HINT}"
            ) from None

    def check_fits(
        self, *, patch_px: int, mpp: float | None, tolerance: float, reference: str, where: object
    ) -> None:
        """Refuse patches of another size or resolution than ``reference`` (a model, the
        config, the first store) expects; mpp within ``tolerance`` of ``reference``'s.

        One check for train, eval and infer, so all three refuse the same stores with the same
        message. A store of unknown mpp only fits a reference of unknown mpp (None, or NaN as
        a checkpoint of such stores saves it).
        """
        if mpp is not None and math.isnan(mpp):
            mpp = None
        if self.tiling.patch_px != patch_px:
            raise TilingMismatchError(
                f"{where}: patches are {self.tiling.patch_px} px but {reference} expects "
                f"{patch_px} px; tile the slide with patch_px {patch_px}"
            )
        mine = self.patch_mpp
        if mine is None and mpp is None:
            return
        if mine is None or mpp is None or abs(mine - mpp) > tolerance * mpp:
            raise TilingMismatchError(
                f"{where}: patches are at {_mpp_text(mine)} um/px but {reference} expects "
                f"{_mpp_text(mpp)} um/px (tolerance {tolerance:.0%}); tile the slide with "
                f"target_mpp {_mpp_text(mpp)}"
            )


def image_strip_meta(
    *,
    slide_id: str,
    source: str,
    n_patches: int,
    patch_px: int,
    mpp: float | None,
    classes: tuple[str, ...],
    label_source: dict[str, Any],
    versions: dict[str, str],
    created: str,
) -> PatchStoreMeta:
    """The description of a store of separate ``patch_px`` images laid out as one row."""
    return PatchStoreMeta(
        slide_id=slide_id,
        n_patches=n_patches,
        slide=SlideSection(
            path=source,
            name=slide_id,
            dimensions_level0=(max(n_patches, 1) * patch_px, patch_px),
            backend=IMAGES_BACKEND,
        ),
        mpp=None if mpp is None else MppSection(value=mpp, x=mpp, y=mpp, source="given"),
        tiling=TilingSection(
            patch_px=patch_px,
            stride_px=patch_px,
            effective_mpp=mpp,
            target_mpp=mpp,
            patch_level0=patch_px,
            stride_level0=patch_px,
            n_candidates=n_patches,
            order="one image per patch, side by side",
        ),
        labels=LabelsSection(classes=classes, source=label_source),
        versions=versions,
        created=created,
    )


def _migrate_v1(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Schema 1 wrote the same sections for tiled slides; image stores had only ``tiling``
    {effective_mpp, target_mpp, patch_px} and ``labels``: give those their virtual slide."""
    migrated = dict(attrs)
    if "slide" in migrated:
        return migrated
    tiling = migrated.get("tiling")
    if not isinstance(tiling, Mapping):
        return migrated  # validation names the missing section
    patch_px, mpp = tiling.get("patch_px"), tiling.get("effective_mpp")
    n_patches = migrated.get("n_patches")
    if not isinstance(patch_px, int) or not isinstance(n_patches, int):
        return migrated
    labels = migrated.get("labels") or {}
    upgraded = image_strip_meta(
        slide_id=str(migrated.get("slide_id") or "images"),
        source="",
        n_patches=n_patches,
        patch_px=patch_px,
        mpp=mpp if isinstance(mpp, (int, float)) else None,
        classes=tuple(labels.get("classes", ())),
        label_source=dict(labels.get("source", {})),
        versions={},
        created="",
    )
    return {**migrated, **upgraded.model_dump(mode="json")}


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"field '{field}' is missing"
    return f"field '{field}' is invalid ({error['msg']}, got {error.get('input')!r:.60})"


def _mpp_text(mpp: float | None) -> str:
    return "unknown" if mpp is None else f"{mpp:.4g}"
