"""Inference: patch stores to foreground maps, stitched heatmaps and QuPath ROIs.

Submodules are imported explicitly (``wsi_pixelcam.inference.stitch`` needs no torch; the
model-facing modules do), so importing this package stays cheap.
"""
