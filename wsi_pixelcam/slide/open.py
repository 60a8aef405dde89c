"""``open_slide``: pick a backend that opens the file and say why."""

from __future__ import annotations

from pathlib import Path

from wsi_pixelcam.errors import UnsupportedSlideError
from wsi_pixelcam.slide.base import SlideReader

BACKENDS = ("tiffslide", "openslide")
# tiffslide decodes TIFF-family files in Python threads and is faster for them; openslide
# knows many more vendor formats (MRXS, VMS, DICOM, ...).
_TIFF_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi"}


def _construct(name: str, path: Path, reason: str) -> SlideReader:
    if name == "tiffslide":
        from wsi_pixelcam.slide.tiffslide_reader import TiffSlideReader

        return TiffSlideReader(path, reason)
    from wsi_pixelcam.slide.openslide_reader import OpenSlideReader

    return OpenSlideReader(path, reason)


def open_slide(path: str | Path, backend: str = "auto") -> SlideReader:
    """Open ``path`` with ``backend`` ("tiffslide", "openslide" or "auto").

    Raises UnsupportedSlideError (an OSError) naming the file when nothing opens it.
    """
    path = Path(path)
    if not path.exists():
        raise UnsupportedSlideError(f"{path}: no such file")
    if path.is_dir() and path.suffix.lower() not in {".mrxs", ""}:
        raise UnsupportedSlideError(f"{path}: is a directory, not a slide")
    if backend != "auto":
        if backend not in BACKENDS:
            raise UnsupportedSlideError(f"{path}: unknown backend {backend!r} (use {BACKENDS})")
        try:
            return _construct(backend, path, "requested")
        except Exception as exc:
            raise UnsupportedSlideError(
                f"{path}: {backend} cannot open it ({type(exc).__name__}: {exc})"
            ) from exc
    order = BACKENDS if path.suffix.lower() in _TIFF_SUFFIXES else BACKENDS[::-1]
    failures: list[str] = []
    for name in order:
        reason = f"auto: first choice for {path.suffix or 'no suffix'}"
        if failures:
            reason = "auto: " + "; ".join(failures) + f"; {name} opened it"
        try:
            reader = _construct(name, path, reason)
        except Exception as exc:
            failures.append(f"{name} failed ({type(exc).__name__}: {_short(exc)})")
            continue
        if not reader.level_dimensions or min(reader.dimensions) <= 0:
            reader.close()
            failures.append(f"{name} found no image")
            continue
        return reader
    raise UnsupportedSlideError(
        f"{path}: not a slide any backend can open ({'; '.join(failures)}); "
        "check the file is complete, or convert it to a pyramidal TIFF"
    )


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
