"""Typed configuration, loaded from YAML plus command-line overrides.

This is the only place defaults live. Unknown keys and bad values are rejected with the
dotted field name, so a typo in a YAML file fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wsi_pixelcam.errors import ConfigError

Backend = Literal["auto", "tiffslide", "openslide"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TissueConfig(_Strict):
    """Tissue detection, with every size in physical units so it does not depend on the scanner."""

    thumbnail_mpp: float = Field(8.0, gt=0, description="resolution the mask is computed at")
    min_saturation: float = Field(
        0.05, ge=0, le=1, description="floor on the Otsu threshold (HSV saturation)"
    )
    closing_um: float = Field(16.0, ge=0, description="radius of the morphological closing")
    min_object_um2: float = Field(20_000.0, ge=0, description="smaller tissue pieces are dropped")
    min_hole_um2: float = Field(20_000.0, ge=0, description="smaller holes are filled")


class StoreConfig(_Strict):
    """How patches are compressed in the zarr store."""

    compression: Literal["jpeg", "lossless"] = "jpeg"
    jpeg_quality: int = Field(80, ge=1, le=100)
    shard_mib: float = Field(16.0, gt=0, description="target size of one uncompressed shard")


class LabelConfig(_Strict):
    """How a patch takes a label from ROI annotations."""

    min_coverage: float = Field(
        0.5, gt=0, le=1, description="fraction of the patch a class must cover to label it"
    )
    background_class: str | None = Field(
        "background",
        description="label for annotated slides' patches no class covers enough; "
        "null leaves them unlabelled (-1)",
    )
    classes: list[str] | None = Field(
        None, description="class names in label-index order; default: sorted names found"
    )


class TileConfig(_Strict):
    """Everything that decides which patches a slide yields and how they are stored."""

    target_mpp: float = Field(0.5, gt=0, description="microns per pixel of the stored patches")
    patch_px: int = Field(256, ge=8, le=4096)
    stride_px: int | None = Field(None, ge=1, description="defaults to patch_px (no overlap)")
    mpp_tolerance: float = Field(
        0.02, ge=0, lt=0.5, description="a level this close to target_mpp is read as is"
    )
    min_tissue_frac: float = Field(0.5, ge=0, le=1)
    backend: Backend = "auto"
    read_threads: int = Field(2, ge=1, le=64)
    max_bad_patch_frac: float = Field(
        0.05, ge=0, le=1, description="fail the slide above this fraction of undecodable patches"
    )
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)

    @model_validator(mode="after")
    def _stride_default(self) -> TileConfig:
        if self.stride_px is None:
            object.__setattr__(self, "stride_px", self.patch_px)
        return self

    @property
    def stride(self) -> int:
        """The stride in target pixels, never None after validation."""
        return self.stride_px if self.stride_px is not None else self.patch_px

    def grid_params(self) -> dict[str, Any]:
        """Parameters that change which patches exist; a store tiled with others is stale."""
        return {
            "target_mpp": self.target_mpp,
            "patch_px": self.patch_px,
            "stride_px": self.stride,
            "mpp_tolerance": self.mpp_tolerance,
            "min_tissue_frac": self.min_tissue_frac,
            "tissue": self.tissue.model_dump(),
            "store": self.store.model_dump(),
            "labels": self.labels.model_dump(),
        }


C = TypeVar("C", bound=BaseModel)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def _format_validation(source: str, err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{field}: {msg}")
    return f"{source}: " + "; ".join(parts)


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> C:
    """Build ``cls`` from an optional YAML file, then dotted ``overrides`` (None values skipped).

    Raises ConfigError naming the file and the offending field.
    """
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from exc
