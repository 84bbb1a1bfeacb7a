"""ICL as one weight update read back from committed folders (analysis/heads/whole_model.py): every number against
the files by hand, the function vector's agreement against the one `attribute` wrote, and the refusals."""

import math
import shutil
from pathlib import Path

import pytest

from iclgd_lens.analysis.heads.whole_model import transfer_reading, whole_model_readings

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_the_reading_is_the_files_numbers():
    """Read by hand from smollm2-mr-transfer-s5/per_layer.csv (the model's rows) and smollm2-mr-s5-heads/fv.md."""
    reading = transfer_reading(RESULTS / "smollm2-mr-transfer-s5", RESULTS / "smollm2-mr-s5-heads")
    assert (reading.model, reading.task, reading.runs) == ("SmolLM2-135M-Instruct-Q4_1", "synth-mr", 1)
    assert reading.accuracy["patch_mean"] == (0.791667, 0.666667, 0.895833)
    assert reading.accuracy["zs"][0] == 0.604167 and reading.accuracy["gd"][0] == 0.9375
    assert reading.gain["patch_mean"] == (-0.56362, -0.947124, -0.172169)
    assert reading.gain["gd"] == (0.55378, 0.40378, 0.71475)
    assert reading.patch_cos == (-0.0438289, 0.031483)  # the smallest and largest of the 30 layers' means
    assert reading.norm_ratio[0] == pytest.approx(4.16069) and reading.norm_ratio[1] == pytest.approx(213.261)
    assert reading.random_cos == pytest.approx(0.0006, abs=1e-5)
    # mean |patch_cos_gd| over the 30 layers: the model's, and the other-task null's from other-task-null/
    assert reading.patch_abs_cos == pytest.approx(0.008941, abs=1e-6)
    assert reading.null_abs_cos == pytest.approx(0.008581, abs=1e-6)
    assert (reading.fv_points, reading.fv_best, reading.fv_zs, reading.fv_icl) == (31, 0.671875, 0.640625, 1.0)
    # fv.md's agreement table, as `attribute` wrote it: overlap 0 of 10, chance 0.3704, Spearman 0.1645 and 0.1321
    assert {m: (a["overlap"], a["ranked_by"]) for m, a in reading.agreement.items()} == {
        "gd": (0, "estimate"),
        "lcgd": (0, "estimate"),
    }
    assert reading.agreement["gd"]["chance_overlap"] == pytest.approx(0.3704, abs=1e-4)
    assert reading.agreement["gd"]["spearman"] == pytest.approx(0.1645, abs=1e-4)
    assert reading.agreement["lcgd"]["spearman"] == pytest.approx(0.1321, abs=1e-4)


def test_every_transfer_folder_is_read_beside_its_function_vectors():
    """A transfer folder takes the function vectors of its own model and task, or none; a lenses folder without
    the transfer lens is not a reading."""
    readings = {r.transfer: r for r in whole_model_readings(RESULTS)}
    assert readings["smollm2-mr-transfer-s5"].heads == "smollm2-mr-s5-heads"
    assert readings["smollm2-rt-transfer-s5"].heads is None and readings["smollm2-rt-transfer-s5"].fv_points == 0
    assert math.isnan(readings["smollm2-rt-transfer-s5"].null_abs_cos)  # no other-task null run there
    assert readings["gemma3-subj-transfer-s4"].heads == "gemma3-subj-s4-heads"
    assert "smollm2-rt-lenses" not in readings  # lenses without --transfer


def test_refusals(tmp_path):
    """A folder without the transfer lens is refused by name; two function-vector folders of one model and task are
    refused rather than one picked."""
    with pytest.raises(ValueError, match="no 'transfer_correct_zs'.*not a `lenses --transfer` folder"):
        transfer_reading(RESULTS / "smollm2-rt-lenses")
    for name in ("smollm2-mr-transfer-s5", "smollm2-mr-s5-heads"):
        shutil.copytree(RESULTS / name, tmp_path / name)
    shutil.copytree(RESULTS / "smollm2-mr-s5-heads", tmp_path / "smollm2-mr-s5-heads-again")
    with pytest.raises(ValueError, match="function vectors of synth-mr in 2 folders"):
        whole_model_readings(tmp_path)
