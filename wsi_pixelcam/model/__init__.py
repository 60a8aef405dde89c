"""PixelCAM networks on timm encoders: model, CAMs, seeds and losses (no slides, no zarr).

Import the submodules directly (``encoders``, ``pixelcam``, ``cam``, ``seeds``, ``losses``,
``checkpoint``, ``device``):
only ``encoders`` and what builds on it load timm, so data workers that just draw seeds stay
light.
"""
