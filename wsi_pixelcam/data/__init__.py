"""Torch datasets over patch stores (zarr opened lazily in each loader worker) and transforms."""
