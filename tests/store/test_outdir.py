"""Output files are renamed into place only when complete; a failed write changes nothing."""

from __future__ import annotations

import pytest

from wsi_pixelcam.store.outdir import replaced_when_done


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with replaced_when_done(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block completes
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "rois.geojson"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), replaced_when_done(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rois.geojson"]
