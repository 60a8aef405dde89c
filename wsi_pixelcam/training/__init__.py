"""Training: teacher -> CAM dump -> PixelCAM, with checkpoints and WSOL metrics.

Import submodules directly (``wsi_pixelcam.training.metrics`` needs only numpy).
"""
