"""compare end to end: layout of the saved result, determinism, load round trip, independent recomputation."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from iclgd_lens import Prompts, Result, compare, record
from iclgd_lens.core.recording import attention_output
from tests.helpers import GEMMA3_LIKE, SCRIPTS, tiny_model, toy_task

METRIC_KEYS = {"simaou", "simaou_norm", "random_simaou", "simam_before", "simam", "simam_delta", "rec2ftp"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "toy"
    result = compare(
        tiny_model(), toy_task(), k=6, seed=3, lr=0.05, n_eval=10, batch_size=4, out=folder, progress=False
    )
    return result, folder


def test_result_json_layout(saved):
    result, folder = saved
    data = json.loads((folder / "result.json").read_text())
    config = data["config"]
    assert {"model", "task", "k", "effective_k", "seed", "permutation", "lr", "position", "dtype", "versions"} <= set(
        config
    )
    assert (config["k"], config["effective_k"], config["seed"], config["lr"]) == (6, 6, 3, 0.05)
    assert set(data["accuracy"]) == {"zs", "icl", "gd", "lcgd"}
    for scores in (data, *data["baselines"].values()):
        for method in ("gd", "lcgd"):
            assert set(scores["metrics"][method]) == METRIC_KEYS
            assert len(scores["metrics"][method]["simaou"]["per_layer"]) == 2
        assert set(scores["metrics"]["alpha"]) == {"mean", "per_layer", "defined", "total", "rounding_layers"}
        assert set(scores["lr"]) == {"gd", "lcgd"}
        assert scores["metrics"]["gd"]["simam_delta"]["total"] == 10 * 2 * 4  # queries x layers x heads
        assert set(scores["resolution"]) == {"dtype", "relative", "icl", "gd", "lcgd"}
        assert len(scores["resolution"]["gd"]["scores"]) == 2 and isinstance(scores["notes"], list)
        assert (
            len(scores["per_head"]["gd"]["simam_delta"]) == 2 and len(scores["per_head"]["gd"]["simam_delta"][0]) == 4
        )
    assert set(data["baselines"]) == {"no_training", "trained_norms", "trained_embeddings"}
    assert data["format"] == "iclgd-lens result 2"
    assert config["preset"] == "toolkit" and config["arithmetic"] == "exact" and config["gd_k"] == 6


def test_records_and_episode_layout(saved):
    result, folder = saved
    records = load_file(folder / "records.safetensors")
    # the baselines share their re-initialised W_O: stored once, the others named in the metadata
    assert "model/W_O" in records and "no_training/model/W_O" in records
    assert "trained_norms/model/W_O" not in records and "trained_embeddings/model/W_O" not in records
    loaded = Result.load(folder).W_O
    assert torch.equal(loaded["trained_norms/model"], loaded["no_training/model"])
    assert not torch.equal(loaded["model"], loaded["no_training/model"])
    n = 10
    with safe_open(folder / "records.safetensors", "pt") as file:
        derived, packed = (set(json.loads(file.metadata()[key])) for key in ("derived", "packed"))
    assert derived == packed == set(result.records)  # a GPT-2-shaped model: attn_out is W_O·z + b_O everywhere
    for setting in ("zs", "icl", "gd", "lcgd", "no_training/zs", "trained_embeddings/lcgd"):
        assert f"{setting}/attn_out" not in records  # rebuilt on load from z, W_O and b_O
        assert records[f"{setting}/z"].shape == (n, 2, 4, 8)
        own_keys = int(records[f"{setting}/query_len"].sum())
        assert records[f"{setting}/scores"].shape == (own_keys, 2, 4)  # each query's own keys, no padding
        assert records[f"{setting}/label_logprobs"].shape == (n, 2)
        assert records[f"{setting}/pred"].shape == (n,)
    assert records["labels"].shape == records["query_len"].shape == (n,)
    assert records["model/b_O"].shape == (2, 32)
    assert Result.load(folder).records["zs"].scores.shape[-1] == int(records["query_len"].max())
    episode = json.loads((folder / "episode.json").read_text())
    assert len(episode["demos"]) == 6 and len(episode["queries"]) == n
    assert episode["icl_prefix"][0] == episode["bos"]
    assert set(episode["record_positions"]) == {"zs", "icl", "gd", "lcgd"}
    assert episode["record_positions"]["icl"][0] == len(episode["icl_prefix"]) + len(episode["queries"][0]) - 1


def test_same_seed_gives_identical_result_json(saved, tmp_path):
    _, folder = saved
    compare(
        tiny_model(), toy_task(), k=6, seed=3, lr=0.05, n_eval=10, batch_size=4, out=tmp_path / "again", progress=False
    )
    assert (tmp_path / "again" / "result.json").read_text() == (folder / "result.json").read_text()
    other = compare(tiny_model(), toy_task(), k=6, seed=4, lr=0.05, n_eval=10, progress=False, baselines=())
    assert other.to_json()["metrics"] != json.loads((folder / "result.json").read_text())["metrics"]


def test_load_round_trip(saved):
    result, folder = saved
    loaded = Result.load(folder)
    assert loaded.to_json() == json.loads(json.dumps(result.to_json()))
    assert loaded.summary().equals(result.summary())
    for setting, recorded in result.records.items():
        for name, tensor in recorded.tensors().items():  # bit for bit: attn_out rebuilt, scores unpacked
            assert torch.equal(loaded.records[setting].tensors()[name], tensor), (setting, name)
    assert loaded.episode == result.episode


def test_a_full_result_loads_equal_to_the_slim_one(saved, tmp_path):
    """Format 1 stored every setting's attn_out and its zero-padded scores: such a folder loads to the same records
    as the slim folder the toolkit writes now."""
    result, folder = saved
    full = tmp_path / "full"
    shutil.copytree(folder, full)
    tensors = {f"{s}/{k}": v.contiguous() for s, r in result.records.items() for k, v in r.tensors().items()}
    tensors |= {"labels": result.labels, "query_len": result.records["zs"].query_len.clone()}
    tensors |= {f"{s}/W_O": w for s, w in result.W_O.items()}
    save_file(tensors, full / "records.safetensors")
    data = json.loads((full / "result.json").read_text())
    (full / "result.json").write_text(json.dumps(data | {"format": "iclgd-lens result 1"}))
    slim, older = Result.load(folder), Result.load(full)
    assert (
        older.b_O == {}
        and (full / "records.safetensors").stat().st_size > (folder / "records.safetensors").stat().st_size
    )
    for setting, recorded in slim.records.items():
        for name, tensor in recorded.tensors().items():
            assert torch.equal(older.records[setting].tensors()[name], tensor), (setting, name)


def test_an_older_result_without_the_later_entries_loads(saved, tmp_path):
    """result.json before notes, predictions, resolution and update norms: Scores fills them empty."""
    _, folder = saved
    older = tmp_path / "older"
    shutil.copytree(folder, older)
    data = json.loads((older / "result.json").read_text())
    for scores in (data, *data["baselines"].values()):
        for key in ("notes", "predictions", "resolution", "update_norm"):
            del scores[key]
    (older / "result.json").write_text(json.dumps(data))
    loaded = Result.load(older)
    assert loaded.scores["model"].notes == [] and loaded.scores["no_training"].update_norm == {}
    assert loaded.summary().loc["simaou", "gd"] == Result.load(folder).summary().loc["simaou", "gd"]


def test_saved_deltas_reproduce_the_finetuned_records(saved):
    """deltas.safetensors holds the trained model's learned changes: applied to a fresh copy of the model through
    hooks, they give back each method's recording without a refit."""
    result, folder = saved
    loaded = Result.load(folder)
    assert set(loaded.deltas) == {"gd", "lcgd"} and (folder / "deltas.safetensors").is_file()
    from iclgd_lens.files import umask

    for written in folder.iterdir():  # the usual permissions (safetensors alone would write them private)
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask(), written.name
    model, episode = tiny_model(), loaded.episode
    for method in ("gd", "lcgd"):
        assert loaded.deltas[method].tensors.keys() == result.deltas[method].tensors.keys()
        again = record(model, Prompts.of(episode, episode.zs_prefix), loaded.deltas[method], batch_size=4)
        torch.testing.assert_close(again.attn_out, result.records[method].attn_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(again.scores, result.records[method].scores, rtol=0, atol=1e-6)


def test_dataframe_views(saved):
    result, _ = saved
    summary = result.summary()
    assert list(summary.columns) == [
        "gd",
        "lcgd",
        "no_training/gd",
        "no_training/lcgd",
        "trained_norms/gd",
        "trained_norms/lcgd",
        "trained_embeddings/gd",
        "trained_embeddings/lcgd",
    ]
    assert summary.loc["simaou", "gd"] == result.metrics["gd"]["simaou"]["mean"]
    assert summary.loc["alpha", "lcgd"] == result.metrics["alpha"]["mean"]
    assert summary.loc["acc_icl", "gd"] == result.accuracy["icl"]
    per_layer = result.per_layer("simam_delta")
    assert per_layer.shape == (2, 8) and per_layer.index.name == "layer"
    per_head = result.per_head("simaou", "no_training/lcgd")
    assert per_head.shape == (2, 4)
    # per-head SimAM∆ averaged over heads is the per-layer number
    torch.testing.assert_close(
        torch.tensor(result.per_head("simam_delta", "gd").mean(1).values), torch.tensor(per_layer["gd"].values)
    )
    with pytest.raises(ValueError, match="unknown metric"):
        result.per_layer("simaouu")
    with pytest.raises(ValueError, match="unknown method"):
        result.per_head("simaou", "sgd")


def test_recompute_script_agrees(saved):
    _, folder = saved
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "recompute_metrics.py"), str(folder)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "all numbers recomputed" in run.stdout


def test_recompute_script_catches_a_tampered_number(saved, tmp_path):
    _, folder = saved
    copy = tmp_path / "tampered"
    copy.mkdir()
    for name in ("records.safetensors", "episode.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    data = json.loads((folder / "result.json").read_text())
    data["metrics"]["gd"]["simam_delta"]["per_layer"][1] += 0.01
    (copy / "result.json").write_text(json.dumps(data))
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "recompute_metrics.py"), str(copy)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "simam_delta" in run.stderr


def test_output_folder_is_refused_before_compute_and_never_half_written(saved, tmp_path, monkeypatch):
    _, folder = saved
    with pytest.raises(FileExistsError, match="already holds a result.*--overwrite"):
        compare(tiny_model(), toy_task(), out=folder, progress=False)
    # an interrupted save leaves no result behind
    import iclgd_lens.core.results as results

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "save_file", interrupted)
    target = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        compare(tiny_model(), toy_task(), k=2, n_eval=2, baselines=(), out=target, progress=False)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_first_option_position_and_o_group(tmp_path):
    result = compare(
        tiny_model(),
        toy_task(),
        k=4,
        n_eval=4,
        lr=0.05,
        position="first_option",
        groups=("k", "v", "o"),
        baselines=("no_training",),
        progress=False,
        out=tmp_path / "r",
    )
    assert set(result.W_O) == {"model", "gd", "lcgd", "no_training/model", "no_training/gd", "no_training/lcgd"}
    assert not torch.equal(result.W_O["gd"], result.W_O["model"])
    episode = result.episode
    assert int(result.records["zs"].position[0]) == 1 + len(episode.queries[0]) + len(episode.label_tokens[0]) - 1
    loaded = Result.load(tmp_path / "r")
    assert set(loaded.W_O) == set(result.W_O)
    script = SCRIPTS / "recompute_metrics.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "r")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr  # per-head SimAOU with the trained W_O


def test_recompute_script_agrees_with_reference_arithmetic_and_f2t(tmp_path):
    compare(
        tiny_model(),
        toy_task(),
        k=4,
        n_eval=8,
        lr=0.05,
        baselines=("trained_norms",),
        preset="reference",
        subsets=("f2t",),
        progress=False,
        out=tmp_path / "reference",
    )
    script = SCRIPTS / "recompute_metrics.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "reference")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "f2t" in run.stdout and "all numbers recomputed" in run.stdout


def test_undefined_similarities_are_nan_counted_and_recomputed(tmp_path):
    """A delta that changes nothing: every FT − ZS update is zero, so SimAOU and SimAM∆ are undefined (NaN,
    0 defined), not 0; the notes say so; the independent script agrees. Under the reference arithmetic they are 0."""
    from iclgd_lens.core.deltas import Delta
    from iclgd_lens.core.methods import register_method, registered

    original = registered("gd")
    try:  # GD replaced, through the plug-in interface, by a method that changes nothing
        register_method("gd", lambda model, episode, context: Delta.zeros(model, context.parameters))
        options = dict(k=4, n_eval=6, baselines=(), lr_lcgd="gd", progress=False)  # nothing to match LCGD's size to
        exact = compare(tiny_model(), toy_task(), **options, out=tmp_path / "e")
        reference = compare(tiny_model(), toy_task(), **options, arithmetic="reference")
    finally:
        register_method("gd", original.fn, original.options, original.description)
    gd = exact.metrics["gd"]
    for name in ("simaou", "simaou_norm", "simam_delta"):
        assert math.isnan(gd[name]["mean"]) and gd[name]["defined"] == 0
    assert gd["simam"]["defined"] == gd["simam"]["total"]  # cos(m_ICL, m_FT) stays defined
    assert reference.metrics["gd"]["simaou"]["mean"] == 0.0
    assert any("simam_delta: 48 of 48 values undefined" in note for note in exact.scores["model"].notes)
    assert any(note.startswith("gd: up to 100% of attention-output updates are zero") for note in exact.summary().notes)
    assert "note: gd simaou" in repr(exact.summary())
    script = SCRIPTS / "recompute_metrics.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "e")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_compare_in_half_precision_follows_the_float32_run(dtype):
    """The dtype path that CUDA runs use (here on the CPU): every setting runs in `dtype`, the records come back as
    float32, the resolution diagnostic is `dtype`'s, and the numbers follow the float32 run within its precision."""
    args = dict(k=4, n_eval=6, lr=0.05, baselines=(), progress=False)
    full = compare(tiny_model(), toy_task(), **args)
    half = compare(tiny_model().to(dtype, print_details=False), toy_task(), **args)
    assert half.config["dtype"] == str(dtype).removeprefix("torch.")
    assert half.scores["model"].resolution["dtype"] == half.config["dtype"]
    assert all(t.dtype == dtype for t in half.deltas["lcgd"].tensors.values())
    for setting in ("zs", "icl", "gd", "lcgd"):
        assert half.records[setting].attn_out.dtype == torch.float32
        torch.testing.assert_close(half.records[setting].attn_out, full.records[setting].attn_out, atol=0.05, rtol=0.05)


def test_lcgd_trains_at_its_own_lr_and_the_update_norms_are_recorded():
    from iclgd_lens.core.deltas import trained_parameters
    from iclgd_lens.core.finetuning import fit
    from iclgd_lens.core.methods import MethodContext

    model, task = tiny_model(), toy_task()
    result = compare(
        model, task, k=4, seed=1, lr=0.05, lr_lcgd=0.2, n_eval=4, baselines=("no_training",), progress=False
    )
    assert (result.config["lr"], result.config["lr_lcgd"]) == (0.05, 0.2)
    assert (result.lr_of("gd"), result.lr_of("lcgd")) == (0.05, 0.2)
    episode = result.episode
    by_hand = fit(model, episode.train_demos, episode.bos, MethodContext(0.2, trained_parameters(model)), "lcgd")
    for name, tensor in result.deltas["lcgd"].tensors.items():
        assert torch.allclose(tensor, by_hand.tensors[name], atol=1e-6), name
    norms = result.scores["model"].update_norm
    for method in ("gd", "lcgd"):
        total = math.sqrt(sum(float(t.double().pow(2).sum()) for t in result.deltas[method].tensors.values()))
        assert norms[method]["total"] == pytest.approx(total, rel=1e-6)
        assert len(norms[method]["per_layer"]) == model.cfg.n_layers
    assert set(result.scores["no_training"].update_norm) == {"gd", "lcgd"}
    assert result.config["trained_parameters"] == list(trained_parameters(model))


def test_a_gemma_shaped_result_keeps_its_attention_output(tmp_path):
    """Gemma 3 normalises the attention output before the residual add, so attn_out is not W_O·z + b_O: the recording
    reads it at hook_attn_out and the folder stores it; the scores are still packed, and all loads back exactly."""
    model = tiny_model(**GEMMA3_LIKE)
    result = compare(
        model,
        toy_task(),
        k=4,
        seed=1,
        lr=0.05,
        n_eval=6,
        batch_size=4,
        baselines=("no_training",),
        groups=("q", "k", "v"),
        out=tmp_path / "gemma",
        progress=False,
    )
    with safe_open(tmp_path / "gemma" / "records.safetensors", "pt") as file:
        assert json.loads(file.metadata()["derived"]) == []
        assert set(json.loads(file.metadata()["packed"])) == set(result.records)
        assert "icl/attn_out" in file.keys()
    loaded = Result.load(tmp_path / "gemma")
    for setting, recorded in result.records.items():
        for name, tensor in recorded.tensors().items():
            assert torch.equal(loaded.records[setting].tensors()[name], tensor), (setting, name)
    icl = result.records["icl"]
    rebuilt = attention_output(icl.z, *loaded.output_weights("icl"))
    assert not torch.allclose(rebuilt, icl.attn_out, atol=1e-3)  # the post-attention norm is really there


def test_rounding_level_layers_are_left_out_of_the_score_update_means(tmp_path):
    """On a rotary model ICL's layer-0 scores to the query's own tokens equal ZS's up to float32 rounding (rotary
    positions are relative): that layer's SimAM∆ measures rounding and is NaN with its reason, out of the mean and
    of `defined`; α keeps it (LCGD's and GD's layer-0 updates are real); the bootstrap's per-query values and the
    independent script apply the same rule."""
    from iclgd_lens.analysis.protocol.bootstrap import query_values

    result = compare(
        tiny_model(positional="rotary"), toy_task(), k=4, n_eval=6, baselines=(), progress=False, out=tmp_path / "r"
    )
    assert result.scores["model"].resolution["icl"]["scores"][0] > 0.5  # the premise: layer 0 is rounding
    delta = result.metrics["gd"]["simam_delta"]
    assert delta["rounding_layers"] == [0] and math.isnan(delta["per_layer"][0])
    assert delta["mean"] == pytest.approx(delta["per_layer"][1]) and delta["defined"] == delta["total"] // 2
    assert result.metrics["alpha"]["rounding_layers"] == [] and not math.isnan(result.metrics["alpha"]["per_layer"][0])
    assert any("simam_delta: layers [0] left out of the means" in note for note in result.scores["model"].notes)
    assert np.isnan(query_values(result)["simam_delta"][:, 0]).all()
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "recompute_metrics.py"), str(tmp_path / "r")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    reference = compare(
        tiny_model(positional="rotary"), toy_task(), k=4, n_eval=6, baselines=(), progress=False, arithmetic="reference"
    )
    assert reference.metrics["gd"]["simam_delta"]["rounding_layers"] == []  # the reference averages every value in
