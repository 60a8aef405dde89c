"""PixelCAM networks on timm encoders: model, CAMs, seeds and losses (no slides, no zarr)."""
