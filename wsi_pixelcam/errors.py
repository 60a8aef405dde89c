"""Errors users can act on.

Every error the CLI reports without a traceback derives from :class:`WsiPixelcamError`.
Each child also derives from the builtin a caller would naturally catch (``OSError`` for
unreadable files, ``ValueError`` for bad values), so library users need not import ours.
Messages name the file and say what to do.
"""

from __future__ import annotations


class WsiPixelcamError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(WsiPixelcamError, ValueError):
    """A config file or option has an unknown key or a bad value."""


class UnsupportedSlideError(WsiPixelcamError, OSError):
    """No backend can open the file as a slide."""


class SlideReadError(WsiPixelcamError, OSError):
    """The slide opened but its pixel data could not be decoded."""


class MppError(WsiPixelcamError, ValueError):
    """The slide's microns-per-pixel are missing, absurd or inconsistent."""


class NoTissueError(WsiPixelcamError, ValueError):
    """Tissue detection found nothing to tile."""


class AnnotationError(WsiPixelcamError, ValueError):
    """An annotation or label file is malformed or does not fit the slide."""


class ManifestError(WsiPixelcamError, ValueError):
    """A slide manifest or input list is unusable."""


class StoreError(WsiPixelcamError, OSError):
    """A zarr store is missing, incomplete, locked or of another schema."""


class OutputError(WsiPixelcamError, OSError):
    """An output location cannot be written."""


class CheckpointError(WsiPixelcamError, ValueError):
    """A checkpoint is missing or does not fit the requested setup."""


class ModelError(WsiPixelcamError, ValueError):
    """An encoder name, weights file or device request cannot be honoured."""


class DataError(WsiPixelcamError, ValueError):
    """Training or evaluation data is unusable (no labels, one class, mixed tiling...)."""


class TilingMismatchError(DataError):
    """A patch store was cut at another patch size or resolution than a model or run needs."""
