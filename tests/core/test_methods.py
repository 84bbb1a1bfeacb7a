"""Update rules as plug-ins: a registered method is a setting everywhere a method goes, a wrong Delta is refused, and
the built-in variants are registered with their options (their steps against hand-computed ones: test_finetuning.py)."""

import json
from importlib.metadata import EntryPoint

import pandas as pd
import pytest
import torch

import iclgd_lens.core.methods as methods
from iclgd_lens import Delta, Result, compare, fit, register_method
from iclgd_lens.cli import main
from iclgd_lens.core.methods import available_methods, unregister_method
from tests.helpers import tiny_model, toy_task


def halved_gd(model, episode, context):
    """A plug-in as a user writes one: GD's delta, scaled by the "scale" option."""
    delta = fit(model, episode.train_demos, episode.bos, context)
    return Delta({name: context.options["scale"] * t for name, t in delta.tensors.items()})


@pytest.fixture
def registered():
    register_method("halved-gd", halved_gd, options={"scale": 0.5}, description="GD, halved")
    yield "halved-gd"
    unregister_method("halved-gd")


def test_a_registered_method_runs_through_compare_and_records_its_options(registered, tmp_path):
    model = tiny_model()
    result = compare(
        model,
        toy_task(),
        k=4,
        n_eval=6,
        lr=0.1,
        methods=("gd", registered),
        baselines=("no_training",),
        out=tmp_path / "run",
        progress=False,
    )
    assert result.config["method_options"] == {"gd": {}, registered: {"scale": 0.5}}
    for name, gd in result.deltas["gd"].tensors.items():
        torch.testing.assert_close(result.deltas[registered].tensors[name], 0.5 * gd)
    assert {registered, f"no_training/{registered}"} <= set(result.summary().columns)
    assert Result.load(tmp_path / "run").deltas[registered].tensors.keys() == result.deltas["gd"].tensors.keys()


def test_a_registered_method_runs_through_reproduce_and_its_tables(registered, tmp_path):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "reproduce",
                "--model",
                "tiny-icl",
                "--tasks",
                "synth-sst2",
                "--runs",
                "1",
                "--lr",
                "0.3",
                "--k",
                "6",
                "--n-eval",
                "8",
                "--baselines",
                "--methods",
                "gd",
                registered,
                "--threads",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = pd.read_csv(out / "summary.csv")
    assert registered in set(summary.method)
    assert registered in (out / "tables.md").read_text()


def test_a_delta_of_the_wrong_shape_or_parameters_is_refused_before_anything_is_saved(tmp_path):
    def wrong_shape(model, episode, context):
        delta = Delta.zeros(model, context.parameters)
        name = next(iter(delta.tensors))
        delta.tensors[name] = torch.zeros(3, 3)
        return delta

    def wrong_parameters(model, episode, context):
        return Delta.zeros(model, ("attn.W_Q",))

    for fn, message in ((wrong_shape, "wrong shape"), (wrong_parameters, "other parameters than it was asked")):
        register_method("broken", fn)
        try:
            with pytest.raises(ValueError, match=message):
                compare(
                    tiny_model(),
                    toy_task(),
                    k=4,
                    n_eval=4,
                    methods=("broken",),
                    baselines=(),
                    out=tmp_path / "x",
                    progress=False,
                )
        finally:
            unregister_method("broken")
        assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=r"invalid methods \['nope'\]"):
        compare(tiny_model(), toy_task(), k=4, n_eval=4, methods=("nope",), progress=False)


def test_an_entry_point_method_is_found_by_name_and_loaded_when_it_runs(monkeypatch):
    point = EntryPoint("from-a-package", "tests.core.test_methods:halved_gd", methods.ENTRY_POINT_GROUP)
    monkeypatch.setattr(methods, "entry_points", lambda group: [point] if group == methods.ENTRY_POINT_GROUP else [])
    assert "from-a-package" in available_methods() and "from-a-package" not in methods._REGISTRY
    try:
        assert methods.registered("from-a-package").fn is halved_gd
    finally:
        unregister_method("from-a-package")


def test_the_built_in_variants_are_registered_with_their_options(tmp_path):
    assert {"gd", "lcgd", "lcgd-normalised", "gd-adam"} <= set(available_methods())
    result = compare(
        tiny_model(),
        toy_task(),
        k=4,
        n_eval=4,
        lr=0.01,
        methods=("lcgd-normalised", "gd-adam"),
        baselines=(),
        out=tmp_path / "run",
        progress=False,
    )
    options = json.loads((tmp_path / "run" / "result.json").read_text())["config"]["method_options"]
    assert options == {"lcgd-normalised": {}, "gd-adam": {"epochs": 3, "betas": [0.9, 0.999]}}
    norms = result.scores["model"].update_norm["lcgd-normalised"]["per_layer"]
    assert all(0 < n <= 0.01 * 4 + 1e-6 for n in norms)  # four steps of lr each at most, in every layer
