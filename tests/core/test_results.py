"""Result: a saved folder read back number for number (deltas, each setting's own W_O and b_O, NaN and infinite
scores), and the logic of results.py on small hand-built objects against hand-set numbers and plain torch formulas:
lr_of's order, crossed's pairing, summary(), the output folder's checks, packed scores, weights stored once, each
setting's output weights, check_model's tolerance."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from iclgd_lens import Result, compare
from iclgd_lens.core.metrics import REFERENCE_EPS
from iclgd_lens.core.recording import Record
from iclgd_lens.core.results import (
    RESULT_FORMAT,
    check_output_folder,
    pack_scores,
    read_records,
    setting_output_weights,
    stored_once,
    unpack_scores,
)
from iclgd_lens.core.scoring import Scores
from tests.helpers import tiny_model, toy_task


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One small comparison with a baseline, O trained (each method's own W_O and b_O) and the f2t subset."""
    folder = tmp_path_factory.mktemp("results") / "run"
    result = compare(
        tiny_model(),
        toy_task(),
        k=3,
        seed=1,
        lr=0.05,
        lr_lcgd="gd",
        baseline_lr="paper",
        n_eval=5,
        baselines=("no_training",),
        groups=("k", "v", "o"),
        subsets=("f2t",),
        progress=False,
        out=folder,
    )
    return result, folder


def as_text(scores: Scores) -> str:
    """Scores as JSON text: NaN written as NaN, so that two texts are equal exactly when every number is."""
    return json.dumps(scores.to_json(), sort_keys=True)


def test_a_saved_result_loads_back_bit_for_bit(saved):
    """Against the result in memory: the config, every score (NaN included), the labels, each method's learned
    delta, every W_O and b_O (the methods' own, as O was trained), and each record, attn_out rebuilt from its own
    setting's output weights."""
    result, folder = saved
    loaded = Result.load(folder)
    assert loaded.config == json.loads(json.dumps(result.config))
    assert set(loaded.scores) == {"model", "no_training"}
    for name, scores in result.scores.items():
        assert as_text(loaded.scores[name]) == as_text(scores)
    assert set(loaded.scores["model"].subsets["f2t"]) == {"gd", "lcgd"}
    assert torch.equal(loaded.labels, result.labels)
    assert set(loaded.deltas) == set(result.deltas) == {"gd", "lcgd"}
    for method, delta in result.deltas.items():
        assert loaded.deltas[method].tensors.keys() == delta.tensors.keys()
        for name, tensor in delta.tensors.items():
            assert torch.equal(loaded.deltas[method].tensors[name], tensor.detach()), (method, name)
    owners = {"model", "gd", "lcgd", "no_training/model", "no_training/gd", "no_training/lcgd"}
    for weights in ("W_O", "b_O"):
        written, read = getattr(result, weights), getattr(loaded, weights)
        assert set(read) == set(written) == owners
        for owner, tensor in written.items():
            assert torch.equal(read[owner], tensor), (weights, owner)
    assert not torch.equal(result.W_O["gd"], result.W_O["model"])  # the premise: GD trained its own W_O
    for setting, recorded in result.records.items():
        for name, tensor in recorded.tensors().items():
            assert torch.equal(loaded.records[setting].tensors()[name], tensor), (setting, name)


def test_nan_and_infinite_numbers_survive_save_and_load(saved, tmp_path):
    """Numbers set by hand to NaN and ±inf in the scores come back as NaN and ±inf; the others unchanged."""
    result, _ = saved
    changed = copy.deepcopy(result)
    simaou = changed.scores["model"].metrics["gd"]["simaou"]
    simaou["per_layer"][0], simaou["mean"] = math.nan, math.inf
    changed.scores["no_training"].metrics["lcgd"]["rec2ftp"] = math.nan
    changed.scores["model"].update_norm["lcgd"]["total"] = -math.inf
    changed.save(tmp_path / "odd")
    loaded = Result.load(tmp_path / "odd")
    read = loaded.scores["model"].metrics["gd"]["simaou"]
    assert math.isnan(read["per_layer"][0]) and read["mean"] == math.inf
    assert read["per_layer"][1] == simaou["per_layer"][1]
    assert math.isnan(loaded.scores["no_training"].metrics["lcgd"]["rec2ftp"])
    assert loaded.scores["model"].update_norm["lcgd"]["total"] == -math.inf
    assert loaded.summary().loc["simaou", "gd"] == math.inf


def bare(config: dict, scores: dict[str, Scores] | None = None, **fields) -> Result:
    """A Result holding only what the property or method under test reads."""
    scores = scores or {"model": Scores({}, {}, {})}
    return Result(config, scores, {}, {}, torch.zeros(0, dtype=torch.long), None, **fields)


def test_lr_of_reads_the_recorded_lr_then_the_method_option_then_the_config():
    """Hand-set lrs: as the subject's scores record it; else a registered method's "lr" option; else the config's
    lr_lcgd for LCGD; else the config's lr (results before lr_lcgd: GD's for both)."""
    config = {"lr": 0.1, "lr_lcgd": 0.4, "method_options": {"gd": {}, "adam": {"lr": 0.02}}}
    model, baseline = Scores({}, {}, {}, lr={"gd": 0.3}), Scores({}, {}, {}, lr={"gd": 0.7, "lcgd": 1})
    result = bare(config, {"model": model, "no_training": baseline})
    assert result.lr_of("gd") == 0.3
    assert result.lr_of("gd", "no_training") == 0.7
    lcgd = result.lr_of("lcgd", "no_training")
    assert lcgd == 1.0 and isinstance(lcgd, float)
    assert result.lr_of("adam") == 0.02
    assert result.lr_of("lcgd") == 0.4
    assert result.lr_of("gd", "trained_norms") == 0.1  # a subject without scores: the config's
    older = bare({"lr": 0.1})
    assert older.lr_of("lcgd") == older.lr_of("gd") == 0.1
    assert bare({"lr": 0.1, "lr_lcgd": None}).lr_of("lcgd") == 0.1  # LCGD not run: None recorded


def test_scoring_arithmetic_and_trained_parameters_from_the_config():
    """The eps and dtype a rescoring needs, and the trained parameters of an older config (groups only) by hand."""
    assert bare({"arithmetic": "reference", "dtype": "float16"}).scoring_arithmetic == (REFERENCE_EPS, torch.float16)
    assert bare({"arithmetic": "exact", "dtype": "bfloat16"}).scoring_arithmetic == (None, torch.bfloat16)
    assert bare({}).scoring_arithmetic == (None, torch.float32)
    assert bare({"groups": ["k", "o"]}).trained_parameters == ("attn.W_K", "attn.b_K", "attn.W_O", "attn.b_O")
    assert bare({"groups": ["k", "v"], "trained_parameters": ["attn.W_K"]}).trained_parameters == ("attn.W_K",)


N, LAYERS, HEADS, D_HEAD, D_MODEL = 4, 2, 2, 3, 5
QUERY_LEN = torch.tensor([3, 1, 2, 3])
LABELS = torch.tensor([0, 1, 1, 0])


def hand_record(g: torch.Generator, pred: list[int]) -> Record:
    """Random float32 tensors, zero-padded scores as recorded, log-probs whose argmax is `pred`."""
    own = (torch.arange(3)[None, :] < QUERY_LEN[:, None])[:, None, None, :]
    logprobs = torch.full((N, 2), -2.0)
    logprobs[torch.arange(N), torch.tensor(pred)] = -0.1
    return Record(
        attn_out=torch.randn(N, LAYERS, D_MODEL, generator=g),
        z=torch.randn(N, LAYERS, HEADS, D_HEAD, generator=g),
        scores=torch.randn(N, LAYERS, HEADS, 3, generator=g) * own,
        query_len=QUERY_LEN.clone(),
        label_logprobs=logprobs,
        position=QUERY_LEN + 2,
    )


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dot / (|a| |b|) in float64 along the last dimension (NaN for a zero vector)."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def heads(z: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Each head's output z[:, l, h] @ W_O[l, h], one head at a time: [n, layer, head, d_model]."""
    per_layer = [torch.stack([z[:, l, h].double() @ W[l, h].double() for h in range(HEADS)], 1) for l in range(LAYERS)]
    return torch.stack(per_layer, 1)


def test_crossed_pairs_icl_of_one_side_with_the_methods_of_the_other():
    """Two hand-built sides sharing ZS: each cross pair takes ICL's record and episode from one side and GD's record,
    W_O, b_O, delta, lr and update norm from the other; its accuracies and SimAOU (per layer, and per head through
    GD's own W_O) equal the plain formulas on exactly those records, in the result's arithmetic."""
    g = torch.Generator().manual_seed(0)
    zs = hand_record(g, [1, 0, 0, 0])
    W_model, b_model = (
        torch.randn(LAYERS, HEADS, D_HEAD, D_MODEL, generator=g),
        torch.randn(LAYERS, D_MODEL, generator=g),
    )
    config = {"methods": ["gd"], "seed": 0, "baselines": ["no_training"], "lr": 0.1, "dtype": "float32"}

    def side(kind: str, icl_pred: list[int], gd_pred: list[int], total: float) -> Result:
        records = {"zs": zs, "icl": hand_record(g, icl_pred), "gd": hand_record(g, gd_pred)}
        W_O = {"model": W_model, "gd": torch.randn(LAYERS, HEADS, D_HEAD, D_MODEL, generator=g)}
        b_O = {"model": b_model, "gd": torch.randn(LAYERS, D_MODEL, generator=g)}
        scores = {"model": Scores({}, {}, {}, update_norm={"gd": {"total": total}}, lr={"gd": total / 10})}
        return Result(config, scores, records, W_O, LABELS, f"episode {kind}", {"gd": f"delta {kind}"}, b_O=b_O)

    true, shuffled = side("true", [0, 1, 1, 1], [0, 1, 0, 0], 2.0), side("shuffled", [1, 1, 0, 0], [0, 0, 1, 0], 3.0)
    true.controls["shuffled"] = shuffled
    true.records["icl"].attn_out[0] = zs.attn_out[0]  # no ICL update at query 0: undefined (exact) or 0 (reference)
    for icl, icl_side, gd_side in (("true", true, shuffled), ("shuffled", shuffled, true)):
        pair = true.crossed("shuffled", icl)
        assert pair.records["zs"] is zs and pair.records["icl"] is icl_side.records["icl"]
        assert pair.records["gd"] is gd_side.records["gd"]
        assert set(pair.W_O) == set(pair.b_O) == {"model", "gd"}
        assert pair.W_O["model"] is W_model and pair.W_O["gd"] is gd_side.W_O["gd"]
        assert pair.b_O["model"] is b_model and pair.b_O["gd"] is gd_side.b_O["gd"]
        assert pair.episode == icl_side.episode and pair.deltas == gd_side.deltas
        assert pair.config == config | {"baselines": [], "cross_pair": {"label_control": "shuffled", "icl": icl}}
        scores = pair.scores["model"]
        assert list(pair.scores) == ["model"]
        assert (scores.update_norm, scores.lr) == (gd_side.scores["model"].update_norm, gd_side.scores["model"].lr)
        for setting, side_ in (("icl", icl_side), ("gd", gd_side)):
            expected = (side_.records[setting].pred == LABELS).double().mean().item()
            assert pair.accuracy[setting] == pytest.approx(expected)
        gd = gd_side.records["gd"]
        h_zs, h_icl = zs.attn_out.double(), icl_side.records["icl"].attn_out.double()
        simaou = cos(h_icl - h_zs, gd.attn_out.double() - h_zs)
        assert pair.metrics["gd"]["simaou"]["per_layer"] == pytest.approx(torch.nanmean(simaou, 0).tolist())

        p_zs, p_icl = heads(zs.z, W_model), heads(icl_side.records["icl"].z, W_model)
        per_head = cos(p_icl - p_zs, heads(gd.z, gd_side.W_O["gd"]) - p_zs)
        reported = torch.tensor(scores.per_head["gd"]["simaou"], dtype=torch.float64)
        torch.testing.assert_close(reported, torch.nanmean(per_head, 0))
    exact = true.crossed("shuffled", "true").metrics["gd"]["simaou"]
    assert exact["defined"] == exact["total"] - LAYERS
    true.config = config | {"arithmetic": "reference"}
    reference = true.crossed("shuffled", "true").metrics["gd"]["simaou"]
    h_zs = zs.attn_out.double()
    simaou = cos(true.records["icl"].attn_out.double() - h_zs, shuffled.records["gd"].attn_out.double() - h_zs)
    assert reference["per_layer"] == pytest.approx(simaou.nan_to_num(0.0).mean(0).tolist())
    assert reference["defined"] == reference["total"]
    for kind, icl in (("reversed", "true"), ("shuffled", "reversed")):
        with pytest.raises(ValueError, match="no cross pair"):
            true.crossed(kind, icl)


NAMES = ("simaou", "simaou_norm", "random_simaou", "simam_before", "simam", "simam_delta")


def hand_scores(shift: float, gd_total: float, lcgd_total: float, notes: list[str]) -> Scores:
    """Scores with hand-set numbers: metric i of GD is shift + i / 10, of LCGD shift + i / 10 + 0.01."""

    def metric(mean: float) -> dict:
        return {"mean": mean, "per_layer": [mean - 0.05, mean + 0.05], "defined": 8, "total": 8}

    metrics = {
        method: {name: metric(shift + i / 10 + (0.01 if method == "lcgd" else 0)) for i, name in enumerate(NAMES)}
        | {"rec2ftp": 50.0 + shift}
        for method in ("gd", "lcgd")
    }
    metrics["alpha"] = metric(0.9 + shift) | {"rounding_layers": []}
    subset = {
        m: {"n": 2, "metrics": {name: metric(shift - 1) for name in NAMES} | {"rec2ftp": 100.0}} for m in ("gd", "lcgd")
    }
    return Scores(
        accuracy={"zs": 0.25 + shift, "icl": 0.5 + shift, "gd": 0.625 + shift, "lcgd": 0.75 + shift},
        metrics=metrics,
        per_head={},
        notes=notes,
        subsets={"f2t": subset},
        update_norm={"gd": {"total": gd_total}, "lcgd": {"total": lcgd_total}},
        lr={"gd": 0.00123 + shift, "lcgd": 0.5 + shift},
    )


def test_summary_lays_out_hand_set_numbers():
    """summary(): every method on the model and on each baseline, each metric's mean, α in the LCGD columns only,
    accuracies, lr and ‖ΔW‖ over the trained model's, the notes (a baseline's prefixed); the f2t view; the
    per-layer view of α; the printed table and its HTML."""
    notes = ["f2t subset of gd is empty: its metrics are undefined", "icl answers <class 1> for every query"]
    result = bare(
        {"methods": ["gd", "lcgd"], "lr": 0.1},
        {"model": hand_scores(0.0, 2.0, 4.0, notes), "no_training": hand_scores(0.001, 3.0, 1.0, ["gd rec2ftp ..."])},
    )
    summary = result.summary()
    assert list(summary.columns) == ["gd", "lcgd", "no_training/gd", "no_training/lcgd"]
    assert list(summary.index) == [*NAMES, "rec2ftp", "alpha", "acc_zs", "acc_icl", "acc_ft", "lr", "norm_ratio"]
    assert summary.loc["simam", "gd"] == 0.4 and summary.loc["simam", "lcgd"] == pytest.approx(0.41)
    assert summary.loc["simaou_norm", "no_training/lcgd"] == pytest.approx(0.111)
    assert summary.loc["rec2ftp", "no_training/gd"] == pytest.approx(50.001)
    assert summary.loc["alpha", "lcgd"] == 0.9 and summary.loc["alpha", "no_training/lcgd"] == pytest.approx(0.901)
    assert math.isnan(summary.loc["alpha", "gd"]) and math.isnan(summary.loc["alpha", "no_training/gd"])
    assert summary.loc["acc_ft", "gd"] == 0.625 and summary.loc["acc_ft", "lcgd"] == 0.75
    assert summary.loc["acc_zs", "no_training/lcgd"] == pytest.approx(0.251)
    assert summary.loc["lr", "gd"] == 0.00123 and summary.loc["lr", "no_training/lcgd"] == pytest.approx(0.501)
    assert summary.loc["norm_ratio"].tolist() == [1.0, 1.0, 1.5, 0.25]  # 3 / 2 and 1 / 4
    assert summary.notes == [*notes, "no_training: gd rec2ftp ..."]
    printed = repr(summary)
    assert printed.endswith("\n".join(f"note: {note}" for note in summary.notes))
    assert " 0.00123 " in printed and " 0.400 " in printed  # three significant digits below 0.01, else decimals
    html = summary._repr_html_()
    assert "<li>icl answers &lt;class 1&gt; for every query</li>" in html

    f2t = result.summary("f2t")
    assert list(f2t.index) == [*NAMES, "rec2ftp", "n"]
    assert f2t.loc["simam_delta", "no_training/gd"] == pytest.approx(-0.999) and f2t.loc["n", "lcgd"] == 2
    assert f2t.notes == notes[:1]
    per_layer = result.per_layer("alpha")
    assert list(per_layer.columns) == ["lcgd", "no_training/lcgd"]
    assert per_layer["lcgd"].tolist() == pytest.approx([0.85, 0.95])

    result.scores["model"].update_norm["lcgd"]["total"] = 0.0
    assert math.isnan(result.summary().loc["norm_ratio", "no_training/lcgd"])  # over a zero update: undefined
    older = bare({"methods": ["gd"], "lr": 0.1}, {"model": hand_scores(0.0, 1.0, 1.0, [])})
    older.scores["model"].update_norm, older.scores["model"].lr, older.scores["model"].subsets = {}, {}, {}
    assert "lr" not in older.summary().index and "norm_ratio" not in older.summary().index
    with pytest.raises(ValueError, match="this result has no 'f2t' subset"):
        older.summary("f2t")
    with pytest.raises(ValueError, match="unknown metric 'rec2ftp'"):
        result.per_layer("rec2ftp")


def write_folder(folder, result_json, files=("records.safetensors", "episode.json", "deltas.safetensors")):
    """A folder as a writer might leave it: result.json holding `result_json` (text as is, else JSON) and `files`."""
    folder.mkdir(parents=True)
    text = result_json if isinstance(result_json, str) else json.dumps(result_json)
    (folder / "result.json").write_text(text)
    for name in files:
        (folder / name).write_bytes(b"bytes of " + name.encode())
    return folder


def contents(root) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def test_an_output_folder_is_accepted_only_when_the_toolkit_wrote_it(tmp_path):
    """Hand-written folders: a result of a readable format (or an older one without it), with result folders of
    label controls inside, is the toolkit's; anything else there, or another writer's result.json, is refused for
    overwrite and not, and nothing in it is touched."""
    ours = {"format": RESULT_FORMAT}
    accepted = [
        write_folder(tmp_path / "ours", ours),
        write_folder(tmp_path / "format-1", {"format": "iclgd-lens result 1"}),
        write_folder(tmp_path / "before-formats", {"config": {}, "metrics": {}}),
        write_folder(tmp_path / "no-deltas", ours, files=("records.safetensors", "episode.json")),
    ]
    accepted.append(write_folder(tmp_path / "with-control", ours))
    write_folder(accepted[-1] / "control-shuffled", ours)
    for folder in accepted:
        check_output_folder(folder, overwrite=True)
        with pytest.raises(FileExistsError, match="already holds a result.*overwrite"):
            check_output_folder(folder, overwrite=False)
    check_output_folder(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", overwrite=False)

    refused = [
        write_folder(tmp_path / "other-writer", {"format": "someone else's result"}),
        # another writer's result.json that also holds config and metrics: its format says whose it is
        write_folder(tmp_path / "other-writer-same-keys", {"format": "another tool 1", "config": {}, "metrics": {}}),
        write_folder(tmp_path / "a-list", [RESULT_FORMAT]),
        write_folder(tmp_path / "not-json", "{result"),
        write_folder(tmp_path / "user-file", ours),
        write_folder(tmp_path / "foreign-control", ours),
        write_folder(tmp_path / "control-file", ours),
        write_folder(tmp_path / "dirty-control", ours),
    ]
    (tmp_path / "user-file" / "notes.txt").write_text("mine")
    (tmp_path / "foreign-control" / "control-shuffled").mkdir()
    (tmp_path / "foreign-control" / "control-shuffled" / "notes.txt").write_text("mine")
    (tmp_path / "control-file" / "control-shuffled").write_text("mine")
    write_folder(tmp_path / "dirty-control" / "control-reversed", ours)
    (tmp_path / "dirty-control" / "control-reversed" / "plot.png").write_bytes(b"mine")
    for folder in refused:
        before = contents(folder)
        for overwrite in (True, False):
            with pytest.raises(FileExistsError, match="is not a result folder written by iclgd-lens"):
                check_output_folder(folder, overwrite=overwrite)
        assert contents(folder) == before, folder.name
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError):
        check_output_folder(tmp_path / "a-file", overwrite=True)


def test_saving_over_a_foreign_folder_touches_nothing(saved, tmp_path):
    """Result.save with overwrite over another writer's result.json: refused, every byte kept, nothing beside it."""
    result, _ = saved
    folder = write_folder(tmp_path / "theirs", {"format": "someone else's result"})
    before = contents(tmp_path)
    with pytest.raises(FileExistsError, match="not a result folder written by iclgd-lens"):
        result.save(folder, overwrite=True)
    assert contents(tmp_path) == before


def test_load_refuses_a_missing_folder_and_an_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        Result.load(tmp_path / "none")
    future = write_folder(tmp_path / "future", {"format": "iclgd-lens result 9"})
    with pytest.raises(ValueError, match="format 'iclgd-lens result 9'"):
        Result.load(future)


def test_scores_are_packed_to_each_querys_own_keys_and_unpacked_with_zeros():
    """Against a loop over queries and their own keys: packing keeps scores[i, :, :, k] for k < query_len[i], query
    after query; unpacking puts them back with zeros beyond (what lay there is not kept)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 2, 4, generator=g)  # [n, layer, head, key], noise beyond each query's keys
    query_len = torch.tensor([2, 4, 1])
    packed = pack_scores(scores, query_len)
    expected = torch.stack([scores[i, :, :, k] for i, q in enumerate(query_len.tolist()) for k in range(q)])
    assert torch.equal(packed, expected)
    zero_padded = scores.clone()
    for i, q in enumerate(query_len.tolist()):
        zero_padded[i, ..., q:] = 0
    assert torch.equal(unpack_scores(packed, query_len), zero_padded)
    assert unpack_scores(packed, torch.tensor([2, 4, 1, 0, 0]))[3:].abs().sum() == 0  # no keys: all zero
    assert unpack_scores(packed[:0], torch.zeros(0, dtype=torch.long)).shape == (0, 2, 2, 0)


def test_equal_weights_are_stored_once_and_read_back_under_every_name(tmp_path):
    """Equal tensors of equal shape share one stored copy (the first name); equal values of another shape or other
    values do not; read_records gives every name its tensor back."""
    a = torch.randn(2, 3)
    kept, aliases = stored_once({"x": a, "y": a.clone(), "z": a + 1, "w": a.reshape(6).clone(), "v": a.clone()})
    assert list(kept) == ["x", "z", "w"] and aliases == {"y": "x", "v": "x"}
    save_file(kept, tmp_path / "records.safetensors", metadata={"aliases": json.dumps(aliases)})
    tensors, derived, packed = read_records(tmp_path / "records.safetensors")
    assert set(tensors) == {"x", "y", "z", "w", "v"} and derived == packed == []
    assert torch.equal(tensors["y"], a) and torch.equal(tensors["v"], a) and torch.equal(tensors["z"], a + 1)


def test_each_setting_takes_its_own_output_weights_else_its_models():
    W = {name: torch.full((1,), float(i)) for i, name in enumerate(("model", "gd", "no_training/model"))}
    b = {"model": torch.zeros(1), "gd": torch.ones(1)}
    cases = {
        "icl": ("model", "model"),
        "gd": ("gd", "gd"),
        "lcgd": ("model", "model"),
        "no_training/icl": ("no_training/model", None),
        "no_training/gd": ("no_training/model", None),  # "gd" names the trained model's GD, not the baseline's
    }
    for setting, (w, bias) in cases.items():
        W_O, b_O = setting_output_weights(W, b, setting)
        assert W_O is W[w] and (b_O is None if bias is None else b_O is b[bias]), setting


def test_check_model_accepts_rounding_and_refuses_other_weights_or_shapes(saved):
    """W_O scaled by 1.005 (0.5 % of its largest value apart, as fp16 rounding is) is the result's model; by 1.02
    it is another; another number of heads is refused by the architecture the config records."""
    result, _ = saved
    model = tiny_model()
    result.check_model(model)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.mul_(1.005)
    result.check_model(model)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.mul_(1.02 / 1.005)
    with pytest.raises(ValueError, match="same shapes, other weights"):
        result.check_model(model)
    with pytest.raises(ValueError, match=r"n_heads 2 \(the result's 4\)"):
        result.check_model(tiny_model(n_heads=2, d_head=16))
