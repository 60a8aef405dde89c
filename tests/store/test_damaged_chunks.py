import shutil

import numpy as np
import pytest
from storegen import damage_first_shard, make_store

from wsi_pixelcam.errors import DataError
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.store.damaged_chunks import read_rows, read_rows_together


def test_rows_read_together_are_the_rows_read_one_by_one(tmp_path):
    a, b = make_store(tmp_path / "a.zarr", n=12), make_store(tmp_path / "b.zarr", n=5, seed=3)
    group_a, group_b = open_patch_store(a).group, open_patch_store(b).group
    requests = [
        (group_a["patches"], 7, a), (group_b["masks"], 4, b), (group_a["patches"], 0, a),
        (group_b["patches"], 4, b), (group_a["masks"], 7, a),
    ]  # fmt: skip
    together = read_rows_together(requests)
    one_by_one = [read_rows(array, row, path) for array, row, path in requests]
    assert len(together) == len(requests)
    for got, want in zip(together, one_by_one, strict=True):
        assert got.shape == want.shape and np.array_equal(got, want)
    assert not np.array_equal(together[0], together[2])  # each request its own row


def test_a_damaged_chunk_among_rows_read_together_names_its_store(tmp_path):
    good = make_store(tmp_path / "good.zarr", n=6)
    bad = tmp_path / "bad.zarr"
    shutil.copytree(make_store(tmp_path / "src.zarr", n=6, slide_id="bad"), bad)
    damage_first_shard(bad)
    requests = [
        (open_patch_store(good).group["patches"], 1, good),
        (open_patch_store(bad).group["patches"], 2, bad),
    ]
    with pytest.raises(DataError, match=r"bad\.zarr: patch store of slide 'bad' is damaged"):
        read_rows_together(requests)
