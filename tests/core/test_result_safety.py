"""Result folders: the toolkit never deletes or writes into what it did not write, and an overwrite killed at any
point leaves the old result or the new one, complete."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from iclgd_lens import Result, compare
from iclgd_lens.core.results import check_output_folder
from tests.helpers import tiny_model, toy_task

OLD_SEED, NEW_SEED = 3, 999


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety") / "result"
    compare(tiny_model(), toy_task(), k=3, seed=OLD_SEED, lr=0.05, n_eval=4, baselines=(), out=folder, progress=False)
    return folder


def test_a_folder_holding_a_users_file_is_refused_and_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a result folder written by iclgd-lens.*notes.txt"):
            compare(tiny_model(), toy_task(), k=2, n_eval=2, out=folder, overwrite=overwrite, progress=False)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "my notes"


def test_a_result_folder_with_a_users_file_inside_is_not_overwritten(saved, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in saved.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "plot.png").write_bytes(b"user's plot")
    with pytest.raises(FileExistsError, match="plot.png"):
        check_output_folder(copy, overwrite=True)
    assert (copy / "plot.png").read_bytes() == b"user's plot"


@pytest.mark.parametrize("target", [".", "~", "/", ".."])
def test_working_home_and_root_folders_are_refused(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing to write a result to"):
        check_output_folder(Path(target).expanduser() if target == "~" else Path(target), overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_an_empty_folder_is_used(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    compare(tiny_model(), toy_task(), k=2, n_eval=2, baselines=(), methods=("gd",), out=folder, progress=False)
    assert (folder / "result.json").is_file()


KILLER = """
import os, shutil, signal, sys
import iclgd_lens.core.results as R
import iclgd_lens.files as F
from iclgd_lens import Result

folder, point = sys.argv[1], sys.argv[2]
result = Result.load(folder)
result.config["seed"] = {new_seed}

def kill_around(owner, name, before):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if before:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(owner, name, wrapped)

targets = {{
    "while-writing-records": (R, "save_file", True),
    "after-writing-records": (R, "save_file", False),
    "before-exchange": (F, "_exchange", True),
    "after-exchange": (F, "_exchange", False),
    "before-cleanup": (F.shutil, "rmtree", True),
}}
kill_around(*targets[point])
result.save(folder, overwrite=True)
"""


@pytest.mark.parametrize(
    "point, survivor",
    [
        ("while-writing-records", OLD_SEED),
        pytest.param("after-writing-records", OLD_SEED, marks=pytest.mark.slow),  # make test-fast keeps one kill
        pytest.param("before-exchange", OLD_SEED, marks=pytest.mark.slow),  # point on each side of the exchange
        ("after-exchange", NEW_SEED),
        pytest.param("before-cleanup", NEW_SEED, marks=pytest.mark.slow),
    ],
)
def test_an_overwrite_killed_at_any_point_leaves_a_complete_result(saved, tmp_path, point, survivor):
    folder = tmp_path / "result"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    run = subprocess.run(
        [sys.executable, "-c", KILLER.format(new_seed=NEW_SEED), str(folder), point], capture_output=True, text=True
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    loaded = Result.load(folder)  # complete: every file there and readable
    assert loaded.config["seed"] == survivor
    assert json.loads((folder / "result.json").read_text())["config"]["seed"] == survivor
    # Only hidden staging siblings may remain beside it; nothing else was touched.
    assert all(p.name.startswith(".result.") for p in tmp_path.iterdir() if p != folder)


def test_an_uninterrupted_overwrite_replaces_the_result_and_leaves_nothing_behind(saved, tmp_path):
    folder = tmp_path / "result"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    result = Result.load(folder)
    result.config["seed"] = NEW_SEED
    result.save(folder, overwrite=True)
    assert Result.load(folder).config["seed"] == NEW_SEED and os.listdir(tmp_path) == ["result"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "records.safetensors").unlink(), r"not a complete result folder: \['records.safetensors'\]"),
        (lambda f: (f / "result.json").write_text("{not json"), "corrupt or incomplete result"),
        (lambda f: (f / "records.safetensors").write_bytes(b"\x00" * 16), "corrupt or incomplete result"),
        (lambda f: (f / "episode.json").write_text("{}"), "corrupt or incomplete result"),
    ],
    ids=["missing", "json", "safetensors", "episode"],
)
def test_a_corrupt_result_folder_gives_a_clear_error(saved, tmp_path, damage, message):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    damage(folder)
    with pytest.raises(ValueError, match=message):
        Result.load(folder)
