"""Each run's lens values, kept in the lenses folder's runs/ as they are computed: `lenses` resumes an unfinished
study from them (a run's lenses take minutes to an hour on a CPU), and its `--jobs` processes hand them back this
way. A run's values sit in `<key digest>.npz` (subject -> measure -> [n or 1, layer or point]) beside
`<key digest>.json`, what they were computed from (written last: values without it are computed again). The key is
the run's and the null run's result.json (their bytes' digest), the options that change a value, the toolkit's
version and the values' version, so a changed result, option or set of measures never reads old values."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from iclgd_lens.analysis.protocol.pooled import RunValues
from iclgd_lens.files import holds_marker, replaced_atomically, write_text_atomic

RUNS = "runs"  # the sub-folder of a lenses folder
RUNS_MARKER, RUNS_FORMAT = "runs.json", "iclgd-lens lens runs 1"
VALUES_VERSION = 2  # the measures a run's values hold; 2: the patched runs' majority share (`tv_majority`)


def run_key(run_dir: str | Path, null_dir: str | Path | None, options: dict) -> dict:
    """What a run's lens values depend on. `options`: the lenses options that change a value (baselines, batch
    size, path, transfer). As JSON reads it back (tuples as lists), so that a kept key compares equal."""
    key = {
        "format": RUNS_FORMAT,
        "run": str(Path(run_dir).resolve()),
        "result": _digest(Path(run_dir) / "result.json"),
        "null_run": None if null_dir is None else str(Path(null_dir).resolve()),
        "null_result": None if null_dir is None else _digest(Path(null_dir) / "result.json"),
        "options": options,
        "iclgd_lens": _version(),
        "values": VALUES_VERSION,
    }
    return json.loads(json.dumps(key))


def holds_run_values(out: Path) -> bool:
    """Whether `out` holds the run values of an unfinished lenses study (a folder `lenses` may go on in)."""
    return holds_marker(out / RUNS, RUNS_MARKER, RUNS_FORMAT)


def start_run_values(out: Path) -> None:
    """Mark `out` as a lenses folder before its first run is computed (an unfinished study can be resumed)."""
    if not holds_run_values(out):
        write_text_atomic(out / RUNS / RUNS_MARKER, json.dumps({"format": RUNS_FORMAT}))


def read_run_values(out: Path, key: dict) -> RunValues | None:
    """The values computed for `key`, or None when none were (or their key file is missing)."""
    stem = out / RUNS / _key_digest(key)
    try:
        if json.loads(stem.with_suffix(".json").read_text()) != key:
            return None
    except (OSError, ValueError):
        return None
    values: RunValues = {}
    with np.load(stem.with_suffix(".npz")) as arrays:
        names = json.loads(str(arrays["names"]))
        for index, (subject, measure) in enumerate(names):
            values.setdefault(subject, {})[measure] = arrays[f"v{index}"]
    return values


def write_run_values(out: Path, key: dict, values: RunValues) -> None:
    """Keep one run's values under `key` (the values first, their key last)."""
    stem = out / RUNS / _key_digest(key)
    names = [(subject, measure) for subject, measures in values.items() for measure in measures]
    arrays = {f"v{index}": values[subject][measure] for index, (subject, measure) in enumerate(names)}
    with replaced_atomically(stem.with_suffix(".npz")) as temporary:
        with open(temporary, "wb") as handle:  # a file handle: np.savez would add its own suffix to a name
            np.savez(handle, names=np.array(json.dumps(names)), **arrays)
    write_text_atomic(stem.with_suffix(".json"), json.dumps(key, indent=1))


def _version() -> str:
    try:
        return version("iclgd-lens")
    except PackageNotFoundError:  # run from a source tree on PYTHONPATH
        return "source"


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
