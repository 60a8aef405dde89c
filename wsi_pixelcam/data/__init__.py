"""Torch datasets over patch stores (zarr opened lazily in each loader worker) and transforms.

Import the submodules: ``patch_dataset`` (PatchDataset, store checks, slide-level split),
``transforms`` (the paper's train/eval inputs), ``store_arrays`` (adding ``cams``/``masks``
to a store atomically) and ``masks`` (masks rasterised from QuPath annotations).
"""
