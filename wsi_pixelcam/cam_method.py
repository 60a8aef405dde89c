"""The names of the class activation map flavours, importable without torch or pydantic."""

from __future__ import annotations

from enum import StrEnum


class CamMethod(StrEnum):
    """Class activation map flavours of the image head (computed in ``model/cam.py``).

    Their values are what configs and ``--cam-method`` accept, so no list of names is kept
    anywhere else.
    """

    CAM = "cam"
    GRADCAMPP = "gradcampp"
    LAYERCAM = "layercam"
