import os

import numpy as np
import pytest
import zarr

from wsi_pixelcam.errors import StoreError
from wsi_pixelcam.store import PatchStoreMeta, PatchStoreWriter, open_patch_store
from wsi_pixelcam.store.lock import StoreLock
from wsi_pixelcam.store.meta import image_strip_meta
from wsi_pixelcam.store.patch_store import shard_patches


def _meta(n: int, patch_px: int) -> PatchStoreMeta:
    return image_strip_meta(
        slide_id="s", source="", n_patches=n, patch_px=patch_px, mpp=0.5, classes=(),
        label_source={}, versions={}, created="",
    )  # fmt: skip


def _smooth_patches(n: int, p: int) -> np.ndarray:
    yy, xx = np.mgrid[0:p, 0:p]
    base = np.stack([xx * 255 / p, yy * 255 / p, (xx + yy) * 127 / p], axis=-1)
    return np.stack([base * 0.8 + 4 * i for i in range(n)]).astype(np.uint8)


@pytest.mark.parametrize("compression", ["jpeg", "lossless"])
def test_round_trip_and_atomic_rename(tmp_path, compression):
    patches = _smooth_patches(10, 32)
    final = tmp_path / "s.zarr"
    writer = PatchStoreWriter(
        final, patch_px=32, capacity=12, compression=compression, shard_mib=0.01
    )  # 3 patches per shard: several shards
    for i, patch in enumerate(patches):
        writer.append(patch, (i * 32, 0), 1.0)
        assert not final.exists()  # nothing at the final name until complete
    writer.finalize(_meta(10, 32))
    assert final.exists() and not list(tmp_path.glob("*.tmp-*"))
    store = open_patch_store(final)
    assert len(store) == 10 and store.coords[:, 0].tolist() == [i * 32 for i in range(10)]
    assert store.labels.tolist() == [-1] * 10
    error = np.abs(store.patches[...].astype(int) - patches.astype(int))
    if compression == "lossless":
        assert error.max() == 0
    else:
        assert error.mean() < 3


def test_views_into_a_larger_image_are_stored_exactly(tmp_path):
    """Patches arrive as views into the reader's block; shards reuse their buffers, so an
    early shard must hold its own patches, not later ones."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32 * 10, 3), dtype=np.uint8)
    views = [image[:, 32 * i : 32 * (i + 1)] for i in range(10)]
    assert not views[1].flags.c_contiguous
    final = tmp_path / "s.zarr"
    writer = PatchStoreWriter(
        final, patch_px=32, capacity=10, compression="lossless", shard_mib=0.01
    )
    with pytest.raises(ValueError, match="shape"):
        writer.append(image[:16, :32], (0, 0), 1.0)
    for i, view in enumerate(views):
        writer.append(view, (i * 32, 0), 1.0)
    writer.finalize(_meta(10, 32))
    stored = open_patch_store(final).patches[...]
    assert np.array_equal(stored, np.stack(views))


def test_random_patch_read_touches_one_shard(tmp_path):
    final = tmp_path / "s.zarr"
    writer = PatchStoreWriter(final, patch_px=32, capacity=9, shard_mib=0.01)
    for i, patch in enumerate(_smooth_patches(9, 32)):
        writer.append(patch, (i, 0), 1.0)
    writer.finalize(_meta(9, 32))
    assert shard_patches(32, 0.01) == 3
    shards = sorted(os.listdir(final / "patches" / "c"))
    assert len(shards) == 3  # 9 patches, 3 per shard file


def test_incomplete_store_is_refused(tmp_path):
    final = tmp_path / "s.zarr"
    writer = PatchStoreWriter(final, patch_px=16, capacity=1)
    writer.append(np.zeros((16, 16, 3), np.uint8), (0, 0), 1.0)
    # simulate a crash: the temp store exists, renamed by hand to the final name without attrs
    os.replace(writer.tmp_path, final)
    with pytest.raises(StoreError, match="incomplete"):
        open_patch_store(final)


def test_foreign_group_is_refused(tmp_path):
    zarr.open_group(tmp_path / "x.zarr", mode="w")
    with pytest.raises(StoreError, match="not a wsi-pixelcam patch store"):
        open_patch_store(tmp_path / "x.zarr")


def test_lock_is_exclusive_and_stale_lock_is_taken_over(tmp_path):
    target = tmp_path / "s.zarr"
    with StoreLock(target):
        with pytest.raises(StoreError, match="another run is writing"):
            StoreLock(target).acquire()
    assert not (tmp_path / "s.zarr.lock").exists()
    (tmp_path / "s.zarr.lock").write_text(f'{{"host": "{os.uname().nodename}", "pid": 999999999}}')
    with StoreLock(target):  # the owner pid does not exist: stale
        pass
