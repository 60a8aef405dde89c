"""Training: teacher -> CAM dump -> PixelCAM, with checkpoints and evaluation.

Import submodules directly; the WSOL metrics live in :mod:`wsi_pixelcam.metrics` (numpy
only) because slide-level evaluation in ``inference`` uses them too.
"""
