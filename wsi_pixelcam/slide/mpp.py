"""Microns-per-pixel resolution with the source recorded.

Order: user override -> backend MPP properties -> TIFF metadata (OME-XML physical size,
then resolution tags) -> objective power
(an estimate). The first source that is present decides; a present but implausible value
fails instead of silently falling through to a weaker source.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsi_pixelcam.errors import MppError
from wsi_pixelcam.slide.base import SlideReader

log = logging.getLogger(__name__)

MPP_RANGE = (0.05, 20.0)
"""Plausible level-0 um/px: a 100x objective gives about 0.1, an overview camera a few um."""
MAX_XY_DISAGREEMENT = 0.05
MAX_UPSAMPLING = 2.0
"""How much finer than level 0 patches may be cut: 2x lets a 20x scan (0.5 um/px) feed a model
trained at 40x; beyond that the patches hold no detail the slide has, only more pixels."""
_UM_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_SCREEN_DPI = {72.0, 96.0}  # writer defaults, not a scan resolution
_OBJECTIVE_MPP_AT_10X = 1.0  # 10x ~ 1.0 um/px, 20x ~ 0.5, 40x ~ 0.25


@dataclass(frozen=True)
class Mpp:
    """Resolved level-0 resolution."""

    x: float
    y: float
    source: str
    estimated: bool = False

    @property
    def mean(self) -> float:
        return (self.x + self.y) / 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_mpp(reader: SlideReader, override: float | None = None) -> Mpp:
    """Resolve and sanity-check level-0 MPP; raise MppError naming ``--mpp`` when unusable."""
    path = reader.path
    if override is not None:
        check_mpp_value(override, f"{path}: --mpp (or the manifest's mpp)")
        return Mpp(override, override, "user override")
    for candidate in (_from_properties(reader), _from_tiff_metadata(path), _from_objective(reader)):
        if candidate is not None:
            _check(path, candidate)
            if candidate.estimated:
                log.warning(
                    "%s: MPP %.4f is an estimate (%s)", path, candidate.mean, candidate.source
                )
            return candidate
    raise MppError(
        f"{path}: no microns-per-pixel in the slide metadata (no MPP property, resolution tags "
        "or objective power); pass it with --mpp (or an 'mpp' manifest column)"
    )


def check_mpp_value(value: float, origin: str) -> None:
    """MppError unless ``value`` is a plausible level-0 um/px; ``origin`` names where it was
    given (an override is checked like metadata: a typo such as 500 for 0.5 would otherwise
    ask for a grid 1,000 times the slide's size)."""
    low, high = MPP_RANGE
    if not low <= value <= high:
        raise MppError(
            f"{origin}: {value:g} um/px is not a plausible slide resolution (expected "
            f"{low}-{high}; 40x scans are about 0.25, 20x about 0.5)"
        )


def check_target_mpp(path: Path, mpp: Mpp, target_mpp: float) -> None:
    """MppError when patches would be cut more than MAX_UPSAMPLING finer than level 0."""
    if target_mpp * MAX_UPSAMPLING < mpp.mean * (1 - 1e-9):
        raise MppError(
            f"{path}: target_mpp {target_mpp:g} um/px is {mpp.mean / target_mpp:.3g}x finer than "
            f"the slide's level 0 ({mpp.mean:g} um/px, {mpp.source}); at most "
            f"{MAX_UPSAMPLING:g}x is allowed: raise --target-mpp or check --mpp"
        )


def _check(path: Path, mpp: Mpp) -> None:
    low, high = MPP_RANGE
    for value in (mpp.x, mpp.y):
        if not low <= value <= high:
            raise MppError(
                f"{path}: implausible MPP {value:g} um/px from {mpp.source} "
                f"(expected {low}-{high}); pass the right value with --mpp"
            )
    if abs(mpp.x - mpp.y) > MAX_XY_DISAGREEMENT * max(mpp.x, mpp.y):
        raise MppError(
            f"{path}: MPP x={mpp.x:g} and y={mpp.y:g} from {mpp.source} disagree by more than "
            f"{MAX_XY_DISAGREEMENT:.0%}; pass the right value with --mpp"
        )


def _float(value: object) -> float | None:
    try:
        result = float(str(value))
    except (TypeError, ValueError):
        return None
    return result if result == result else None  # drop NaN


def _from_properties(reader: SlideReader) -> Mpp | None:
    props = reader.properties
    prefix = reader.backend.name
    x = _float(props.get(f"{prefix}.mpp-x"))
    y = _float(props.get(f"{prefix}.mpp-y"))
    if x is None and y is None:
        return None
    x = x if x is not None else y
    y = y if y is not None else x
    assert x is not None and y is not None
    return Mpp(x, y, f"backend property {prefix}.mpp-x/y")


_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _from_ome(ome_xml: str | None) -> Mpp | None:
    """PhysicalSizeX/Y of the first OME Pixels element (micrometres unless a unit says not)."""
    if not ome_xml:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next(
        (el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None
    )
    if pixels is None:
        return None
    x, y = _float(pixels.get("PhysicalSizeX")), _float(pixels.get("PhysicalSizeY"))
    if x is None or y is None:
        return None
    x *= _OME_UNIT_UM.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
    y *= _OME_UNIT_UM.get(pixels.get("PhysicalSizeYUnit", "µm"), 1.0)
    return Mpp(x, y, "OME-XML PhysicalSizeX/Y")


def _from_tiff_metadata(path: Path) -> Mpp | None:
    """OME-XML physical sizes, else the first page's resolution tags."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            ome = _from_ome(tif.ome_metadata)
            if ome is not None:
                return ome
            tags = tif.pages.first.tags
            unit_tag = tags.get("ResolutionUnit")
            x_tag, y_tag = tags.get("XResolution"), tags.get("YResolution")
            if unit_tag is None or x_tag is None or y_tag is None:
                return None
            unit = int(unit_tag.value)
            x_res = x_tag.value[0] / x_tag.value[1]
            y_res = y_tag.value[0] / y_tag.value[1]
    except Exception:  # not a TIFF, or no readable first page: this source is absent
        return None
    if unit not in _UM_PER_UNIT or x_res <= 0 or y_res <= 0:
        return None
    if unit == 2 and x_res in _SCREEN_DPI and y_res in _SCREEN_DPI:
        return None
    um = _UM_PER_UNIT[unit]
    return Mpp(um / x_res, um / y_res, "TIFF resolution tags")


def _from_objective(reader: SlideReader) -> Mpp | None:
    power = _float(reader.properties.get(f"{reader.backend.name}.objective-power"))
    if power is None or power <= 0:
        return None
    value = _OBJECTIVE_MPP_AT_10X * 10.0 / power
    return Mpp(value, value, f"objective power {power:g}x (estimate)", estimated=True)
