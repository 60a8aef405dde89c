"""Files and directories appear under their final name only when complete."""

from __future__ import annotations

import pytest

from wsi_pixelcam.atomic_write import TMP_MARK, replace_dir, replaced_when_done


@pytest.mark.parametrize("durable", [False, True])
def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path, durable):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with replaced_when_done(target, durable=durable) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block completes
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, durable):
    target = tmp_path / "rois.geojson"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), replaced_when_done(target, durable=durable) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rois.geojson"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_directory_replaces_the_old_one_whole(tmp_path, durable):
    final = tmp_path / "slide.zarr"
    (final / "stale").mkdir(parents=True)
    (final / "stale" / "chunk").write_text("old")
    built = tmp_path / f"slide.zarr{TMP_MARK}1234"
    (built / "patches").mkdir(parents=True)
    (built / "patches" / "c0").write_text("new")
    (built / "zarr.json").write_text("{}")

    replace_dir(built, final, durable=durable)

    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == [
        "patches",
        "patches/c0",
        "zarr.json",
    ]
    assert (final / "patches" / "c0").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.zarr"]


def test_a_directory_moves_into_a_free_name(tmp_path):
    built = tmp_path / f"out{TMP_MARK}ab"
    built.mkdir()
    (built / "summary.json").write_text("{}")
    replace_dir(built, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "summary.json").read_text() == "{}"
