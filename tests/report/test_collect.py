"""Reading a real run into records: what exists is read, what is missing or odd is named."""

from __future__ import annotations

import json
import shutil

import pytest
from report_slide_ids import BROKEN, FUTURE, KILLED, NORMAL, TUMOUR

from wsi_pixelcam.cli import main
from wsi_pixelcam.errors import ManifestError
from wsi_pixelcam.report.collect import collect
from wsi_pixelcam.report.records import (
    INFER_FAILED,
    INFER_INCOMPLETE,
    INFER_INTERRUPTED,
    INFER_OK,
    INFER_OTHER_SCHEMA,
)


@pytest.fixture(scope="module")
def cohort(cohort_run):
    return collect([cohort_run.root])


def _slide(cohort, slide_id):
    return next(s for s in cohort.slides if s.slide_id == slide_id)


def test_every_slide_gets_one_record_with_its_outcome(cohort):
    statuses = {s.slide_id: s.status for s in cohort.slides}
    assert statuses == {
        TUMOUR: INFER_OK,
        NORMAL: INFER_OK,
        BROKEN: INFER_FAILED,
        KILLED: INFER_INTERRUPTED,
        FUTURE: INFER_OTHER_SCHEMA,
    }


def test_inferred_slides_carry_their_summary_numbers_and_files(cohort):
    tumour, normal = _slide(cohort, TUMOUR), _slide(cohort, NORMAL)
    assert (tumour.predicted_class, normal.predicted_class) == ("Tumor", "normal")
    assert tumour.probability == pytest.approx(0.7, abs=1e-4)
    assert tumour.n_rois == 1 and tumour.roi_area_um2 > 0 and normal.n_rois == 0
    assert tumour.threshold == 0.5 and tumour.infer_seconds > 0
    assert tumour.files.thumbnail.name == "thumbnail.png"
    for path in (tumour.files.overlay, tumour.files.rois, tumour.files.tiles, tumour.files.heatmap):
        assert path is not None and path.exists()


def test_failures_and_leftovers_are_explained(cohort):
    broken = _slide(cohort, BROKEN)
    assert broken.error.startswith("UnsupportedSlideError: ") and "\n" not in broken.error
    assert broken.predicted_class is None and broken.files.overlay is None
    assert "killed run" in _slide(cohort, KILLED).notes[0]
    future = _slide(cohort, FUTURE)
    assert "version 99" in future.notes[0] and future.predicted_class is None
    assert future.files.overlay is not None  # what exists is still linked


def test_training_and_evaluation_are_read(cohort, cohort_run):
    (training,) = cohort.trainings
    assert {(e.stage, e.epoch) for e in training.epochs} == {
        (stage, epoch) for stage in ("teacher", "pixelcam") for epoch in (1, 2)
    }
    assert training.split is not None and len(training.split.val_slides) == 1
    assert training.model_path == cohort_run.model_path
    assert len(training.model_fingerprint) == 16 and training.config["model"]["encoder"]
    (evaluation,) = cohort.evaluations
    assert evaluation.pixelcam is not None and evaluation.cam is not None
    assert 0 <= evaluation.pixelcam.pxap <= 100


def test_a_folder_without_summary_and_a_truncated_metrics_log(tmp_path, cohort_run):
    shutil.copytree(cohort_run.root / "infer" / NORMAL, tmp_path / "infer" / "half")
    (tmp_path / "infer" / "half" / "summary.json").unlink()
    shutil.copytree(cohort_run.root / "model", tmp_path / "model")
    with open(tmp_path / "model" / "metrics.jsonl", "a") as log:
        log.write('{"stage": "pixelcam", "epo')  # a kill in the middle of a line
    (tmp_path / "model" / "train_summary.json").unlink()
    cohort = collect([tmp_path])
    assert _slide(cohort, "half").status == INFER_INCOMPLETE
    (training,) = cohort.trainings
    assert len(training.epochs) == 4 and training.model_path is None
    assert any("not a metrics row" in n for n in training.notes)
    assert any("train_summary.json" in n for n in training.notes)


def test_a_summary_that_is_not_json_is_named(tmp_path, cohort_run):
    shutil.copytree(cohort_run.root / "infer" / NORMAL, tmp_path / NORMAL)
    (tmp_path / NORMAL / "summary.json").write_text("{")
    (record,) = collect([tmp_path]).slides
    assert record.status == INFER_OTHER_SCHEMA and "not readable JSON" in record.notes[0]


def test_no_outputs_at_all_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no run outputs found"):
        collect([tmp_path / "empty"])
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsi-pixelcam: error:") and "\n" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ManifestError, match="not a directory"):
        collect([tmp_path / "missing"])


def test_eval_json_of_another_tool_is_ignored(tmp_path, cohort_run):
    shutil.copytree(cohort_run.root / "eval", tmp_path / "eval")
    (tmp_path / "eval" / "notes.json").write_text(json.dumps({"hello": 1}))
    assert [e.source.name for e in collect([tmp_path]).evaluations] == ["test.json"]
