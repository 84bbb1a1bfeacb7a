"""`score` on hand-built records (no model): accuracies, majorities and every metric against plain torch and numpy
formulas (a cosine as dot / (|a||b|), one query's own keys at a time, the papers' reductions by np.nanmean),
undefined values and rounding-level layers with their notes, the class names, the f2t subset, and Scores' JSON."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from iclgd_lens.core.metrics import REFERENCE_EPS
from iclgd_lens.core.recording import Record
from iclgd_lens.core.scoring import PER_HEAD_METRICS, Scores, check_metric, score

N, LAYERS, HEADS, D_HEAD, D_MODEL = 10, 2, 3, 4, 6
QUERY_LEN = torch.tensor([5, 3, 4, 2, 5, 1, 3, 4, 5, 2])
KEYS = int(QUERY_LEN.max())
LABELS = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
PREDS = {
    "zs": [1, 0, 1, 0, 0, 1, 1, 0, 0, 0],  # right on 4, 5, 8: 0.3; class 0 on 6 of 10
    "icl": [0, 1, 0, 1, 1, 1, 1, 0, 0, 1],  # right on 0, 1, 2, 3, 5, 8, 9: 0.7; class 1 on 6
    "gd": [0, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # right on 0, 1, 3, 4, 6, 8: 0.6; class 0 on 7
    "lcgd": [1, 0, 1, 0, 1, 0, 1, 0, 1, 1],  # right on 9 only: 0.1; class 1 on 6
}
METHODS = ("gd", "lcgd")


def build(preds: dict = PREDS, seed: int = 0) -> dict[str, Record]:
    """Random float32 records: ZS, and every other setting ZS plus a random update. Scores beyond each query's own
    keys hold large noise (other in each setting), which no metric may read."""
    g = torch.Generator().manual_seed(seed)
    zs = {
        "attn_out": torch.randn(N, LAYERS, D_MODEL, generator=g),
        "z": torch.randn(N, LAYERS, HEADS, D_HEAD, generator=g),
        "scores": torch.randn(N, LAYERS, HEADS, KEYS, generator=g),
    }
    padding = (torch.arange(KEYS)[None, :] >= QUERY_LEN[:, None])[:, None, None, :]
    records = {}
    for setting, pred in preds.items():
        parts = {k: v.clone() if setting == "zs" else v + torch.randn(v.shape, generator=g) for k, v in zs.items()}
        parts["scores"] = torch.where(padding, 100 * torch.randn(zs["scores"].shape, generator=g), parts["scores"])
        logprobs = torch.full((N, 2), -2.0)
        logprobs[torch.arange(N), torch.tensor(pred)] = -0.1
        records[setting] = Record(**parts, query_len=QUERY_LEN.clone(), label_logprobs=logprobs, position=QUERY_LEN + 3)
    return records


def weights(seed: int = 1) -> dict[str, torch.Tensor]:
    """The model's W_O, and GD's own (GD trained O; LCGD did not)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(LAYERS, HEADS, D_HEAD, D_MODEL, generator=g) for name in ("model", "gd")}


W_O = weights()


def scored(records: dict[str, Record], seed: int, **options) -> Scores:
    """`score` of the methods in `records` (all but ZS and ICL); by default the toolkit's exact arithmetic on a
    float32 recording."""
    return score(records, LABELS, W_O, seed=seed, **({"eps": None, "dtype": torch.float32} | options))


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dot / (|a| |b|) along the last dimension in float64: NaN (0 / 0) where either vector is zero."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x.double() / x.double().norm(dim=-1, keepdim=True)


def own_keys_cos(a: torch.Tensor, b: torch.Tensor, query_len: torch.Tensor = QUERY_LEN) -> torch.Tensor:
    """[n, layer, head]: each query's cosine over its own first query_len keys, one query at a time."""
    return torch.stack([cos(a[i, ..., :q], b[i, ..., :q]) for i, q in enumerate(query_len.tolist())])


def means(values: torch.Tensor) -> tuple[float, list[float]]:
    """The papers' reduction with numpy: mean over heads (if any), then queries, then layers, each skipping NaN."""
    v = values.double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN layer
        per_layer = np.nanmean(np.nanmean(v, axis=2) if v.ndim == 3 else v, axis=0)
        return float(np.nanmean(per_layer)), per_layer.tolist()


def check(reduced: dict, values: torch.Tensor) -> None:
    """A metric's {mean, per_layer, defined, total} against `means` of the per-query values computed in the test."""
    mean, per_layer = means(values)
    assert reduced["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12, nan_ok=True)
    assert reduced["per_layer"] == pytest.approx(per_layer, rel=1e-9, abs=1e-12, nan_ok=True)
    assert (reduced["defined"], reduced["total"]) == (int((~values.isnan()).sum()), values.numel())


def close(reported: list, expected: torch.Tensor) -> None:
    torch.testing.assert_close(torch.tensor(reported, dtype=torch.float64), expected.double(), equal_nan=True)


def test_accuracies_majorities_and_rec2ftp_by_hand():
    """Counted by hand from PREDS: accuracies, each setting's commonest answer, and Rec2FTP (GD fixes 0, 1, 3, 6 of
    ZS's errors, ICL gets 0, 1, 3 of them right: 75 %; LCGD fixes 9, which ICL gets right: 100 %)."""
    out = scored(build(), 0)
    assert out.accuracy == pytest.approx({"zs": 0.3, "icl": 0.7, "gd": 0.6, "lcgd": 0.1})
    assert out.predictions == {
        "zs": {"class": 0, "share": 0.6},
        "icl": {"class": 1, "share": 0.6},
        "gd": {"class": 0, "share": 0.7},
        "lcgd": {"class": 1, "share": 0.6},
    }
    assert out.metrics["gd"]["rec2ftp"] == pytest.approx(75.0)
    assert out.metrics["lcgd"]["rec2ftp"] == pytest.approx(100.0)
    assert out.notes == []  # nothing undefined, no rounding, no setting near one class


def test_attention_output_metrics_equal_plain_cosines():
    """SimAOU, Dai's SimAOU (unit vectors first) and the random baseline (r ~ U[0, 1) drawn from the seed) per query
    and layer by the plain formula, reduced with numpy."""
    records = build()
    out = scored(records, 7)
    zs, icl = records["zs"].attn_out.double(), records["icl"].attn_out.double()
    r = torch.rand(zs.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for method in METHODS:
        ft = records[method].attn_out.double()
        metrics = out.metrics[method]
        check(metrics["simaou"], cos(icl - zs, ft - zs))
        check(metrics["simaou_norm"], cos(unit(icl) - unit(zs), unit(ft) - unit(zs)))
        check(metrics["random_simaou"], cos(unit(icl) - unit(zs), r))
    other_seed = scored(records, 8)
    assert other_seed.metrics["gd"]["random_simaou"]["mean"] != out.metrics["gd"]["random_simaou"]["mean"]
    assert other_seed.metrics["gd"]["simaou"] == out.metrics["gd"]["simaou"]


def test_score_metrics_and_alpha_equal_cosines_over_each_querys_own_keys():
    """SimAM before and after, SimAM∆ and α (cos(m_LCGD − m_ZS, m_GD − m_ZS)) one query at a time over its own
    keys (the noisy padding beyond them ignored), per layer and per head; α only when both GD and LCGD ran."""
    records = build()
    out = scored(records, 0)
    zs, icl = records["zs"].scores.double(), records["icl"].scores.double()
    before = own_keys_cos(icl, zs)
    for method in METHODS:
        ft = records[method].scores.double()
        metrics, per_head = out.metrics[method], out.per_head[method]
        check(metrics["simam_before"], before)
        check(metrics["simam"], own_keys_cos(icl, ft))
        delta = own_keys_cos(icl - zs, ft - zs)
        check(metrics["simam_delta"], delta)
        assert metrics["simam_delta"]["rounding_layers"] == []
        close(per_head["simam_before"], before.mean(0))
        close(per_head["simam"], own_keys_cos(icl, ft).mean(0))
        close(per_head["simam_delta"], delta.mean(0))
    alpha = own_keys_cos(records["lcgd"].scores.double() - zs, records["gd"].scores.double() - zs)
    check(out.metrics["alpha"], alpha)
    assert out.metrics["alpha"]["rounding_layers"] == []
    close(out.per_head["alpha"], alpha.mean(0))
    gd_only = scored({s: records[s] for s in ("zs", "icl", "gd")}, 0)
    assert set(gd_only.metrics) == set(gd_only.per_head) == {"gd"}


def test_per_head_simaou_uses_each_settings_own_output_weights():
    """Per-head outputs z[:, l, h] @ W_O[l, h], one head at a time: ZS and ICL through the model's W_O, GD (which
    trained O) through its own, LCGD through the model's."""

    def heads(z: torch.Tensor, W: torch.Tensor) -> torch.Tensor:  # [n, layer, head, d_model]
        per_layer = [torch.stack([z[:, l, h].double() @ W[l, h].double() for h in range(HEADS)], 1) for l in range(2)]
        return torch.stack(per_layer, 1)

    records = build()
    out = scored(records, 0)
    h_zs, h_icl = heads(records["zs"].z, W_O["model"]), heads(records["icl"].z, W_O["model"])
    for method, own in (("gd", W_O["gd"]), ("lcgd", W_O["model"])):
        h_ft = heads(records[method].z, own)
        close(out.per_head[method]["simaou"], cos(h_icl - h_zs, h_ft - h_zs).mean(0))
        close(out.per_head[method]["simaou_norm"], cos(unit(h_icl) - unit(h_zs), unit(h_ft) - unit(h_zs)).mean(0))
    assert set(out.per_head["gd"]) == set(PER_HEAD_METRICS) - {"alpha"}
    # the test can tell the weights apart: GD's outputs through the model's W_O give other numbers
    h_model = heads(records["gd"].z, W_O["model"])
    wrong = cos(h_icl - h_zs, h_model - h_zs).mean(0)
    assert not torch.allclose(torch.tensor(out.per_head["gd"]["simaou"], dtype=torch.float64), wrong)


def test_a_zero_update_is_undefined_with_its_notes_and_zero_under_the_reference_arithmetic():
    """GD leaves queries 3 and 8's layer-1 attention output and query 4's layer-0 head-2 scores unchanged: those
    similarities are NaN (0 / 0 in the plain formula), out of the means and of `defined`, each counted in a note,
    and the 20 % of unchanged layer-1 outputs named in the resolution note. The reference arithmetic scores them 0
    (the plain values with NaN replaced by 0) and notes nothing undefined."""
    records = build()
    zs, gd = records["zs"], records["gd"]
    gd.attn_out[[3, 8], 1] = zs.attn_out[[3, 8], 1]
    gd.scores[4, 0, 2] = zs.scores[4, 0, 2]
    exact = scored(records, 0)
    reference = scored(records, 0, eps=REFERENCE_EPS, dtype=torch.float32)
    h_zs, h_icl, h_gd = (records[s].attn_out.double() for s in ("zs", "icl", "gd"))
    simaou = cos(h_icl - h_zs, h_gd - h_zs)
    simaou_norm = cos(unit(h_icl) - unit(h_zs), unit(h_gd) - unit(h_zs))
    m_zs, m_icl, m_gd = (records[s].scores.double() for s in ("zs", "icl", "gd"))
    simam_delta = own_keys_cos(m_icl - m_zs, m_gd - m_zs)
    assert int(simaou.isnan().sum()) == int(simaou_norm.isnan().sum()) == 2 and int(simam_delta.isnan().sum()) == 1
    gd_metrics = exact.metrics["gd"]
    check(gd_metrics["simaou"], simaou)
    check(gd_metrics["simaou_norm"], simaou_norm)
    check(gd_metrics["simam_delta"], simam_delta)
    assert (gd_metrics["simaou"]["defined"], gd_metrics["simam_delta"]["defined"]) == (18, 59)
    assert gd_metrics["simam"]["defined"] == gd_metrics["simam"]["total"]  # cos(m_ICL, m_GD) stays defined
    close(exact.per_head["gd"]["simam_delta"], torch.tensor(np.nanmean(simam_delta.numpy(), axis=0)))
    assert exact.resolution["gd"]["attn_out"] == pytest.approx([0.0, 0.2])
    assert exact.resolution["gd"]["scores"] == pytest.approx([1 / 30, 0.0])
    assert [note for note in exact.notes if not note.startswith("alpha")] == [
        "gd: up to 20% of attention-output updates are zero or below float32 resolution (1e-06 of the ZS vector) in "
        "layers [1]: their similarities measure rounding",
        "gd simaou: 2 of 20 values undefined (a zero update or zero vector), skipped in the means",
        "gd simaou_norm: 2 of 20 values undefined (a zero update or zero vector), skipped in the means",
        "gd simam_delta: 1 of 60 values undefined (a zero update or zero vector), skipped in the means",
    ]
    # α compares LCGD's update with GD's, which is zero at the same (query, layer, head)
    alpha = own_keys_cos(records["lcgd"].scores.double() - m_zs, m_gd - m_zs)
    check(exact.metrics["alpha"], alpha)
    alpha_notes = [note for note in exact.notes if note.startswith("alpha")]
    assert alpha_notes == ["alpha: 1 of 60 values undefined (a zero update or zero vector), skipped in the means"]
    check(reference.metrics["gd"]["simaou"], simaou.nan_to_num(0.0))
    check(reference.metrics["gd"]["simam_delta"], simam_delta.nan_to_num(0.0))
    assert not any("undefined" in note for note in reference.notes)
    assert reference.notes == exact.notes[:1]  # the resolution diagnostic does not depend on the arithmetic


def test_rounding_level_layers_follow_the_recording_dtype():
    """ICL's layer-0 score updates are 1e-4 of ZS's scores: a real update in float32 (resolution 1e-6), rounding in
    float16 (1e-3). Under float16 layer 0 of SimAM∆ is NaN with its note, out of the mean and `defined`; α
    (LCGD against GD, whose updates are real) keeps it; the reference arithmetic keeps every layer."""
    records = build()
    records["icl"].scores[:, 0] = records["zs"].scores[:, 0] * (1 + 1e-4)
    m_zs, m_icl = records["zs"].scores.double(), records["icl"].scores.double()
    half = scored(records, 0, dtype=torch.float16)
    full = scored(records, 0)
    reference = scored(records, 0, eps=REFERENCE_EPS, dtype=torch.float16)
    assert (half.resolution["dtype"], half.resolution["relative"]) == ("float16", 1e-3)
    assert half.resolution["icl"]["scores"] == [1.0, 0.0] and full.resolution["icl"]["scores"] == [0.0, 0.0]
    for method in METHODS:
        delta = own_keys_cos(m_icl - m_zs, records[method].scores.double() - m_zs)
        check(full.metrics[method]["simam_delta"], delta)
        assert full.metrics[method]["simam_delta"]["rounding_layers"] == []
        check(reference.metrics[method]["simam_delta"], delta)
        assert reference.metrics[method]["simam_delta"]["rounding_layers"] == []
        left_out = delta.clone()
        left_out[:, 0] = math.nan
        check(half.metrics[method]["simam_delta"], left_out)
        assert half.metrics[method]["simam_delta"]["rounding_layers"] == [0]
        assert half.metrics[method]["simam_delta"]["mean"] == pytest.approx(delta[:, 1].mean().item(), rel=1e-9)
        check(half.metrics[method]["simam"], own_keys_cos(m_icl, records[method].scores.double()))  # not excluded
    alpha = own_keys_cos(records["lcgd"].scores.double() - m_zs, records["gd"].scores.double() - m_zs)
    check(half.metrics["alpha"], alpha)
    assert half.metrics["alpha"]["rounding_layers"] == []
    assert (
        "gd simam_delta: layers [0] left out of the means (more than 50% of a compared score update there is below "
        "float16 resolution: its cosine measures rounding)" in half.notes
    )
    assert (
        "icl: up to 100% of score updates are zero or below float16 resolution (0.001 of the ZS vector) in layers "
        "[0]: their similarities measure rounding" in half.notes
    )
    assert not any("left out of the means" in note for note in full.notes + reference.notes)
    subset = scored(records, 0, dtype=torch.float16, subsets=("f2t",))
    sizes = {method: part["n"] for method, part in subset.subsets["f2t"].items()}
    assert all(n > 0 for n in sizes.values()), sizes  # a subset to leave the layer out of
    for method in METHODS:
        assert subset.subsets["f2t"][method]["metrics"]["simam_delta"]["rounding_layers"] == [0]
        assert f"f2t subset, {method} simam_delta: layers [0] left out of the means" in " ".join(subset.notes)


def test_one_class_notes_name_the_class_by_its_label_word():
    """ICL answers class 1 for every query, GD class 0 for 9 of 10 (the 90 % threshold), ZS and LCGD for 6 of 10
    (no note); `class_names` gives the label words, without them the class index."""
    preds = PREDS | {"icl": [1] * N, "gd": [0] * 9 + [1]}
    records = build(preds)
    named = scored(records, 0, class_names=("Negative", "Positive"))
    unnamed = scored(records, 0)
    assert named.predictions["icl"] == {"class": 1, "share": 1.0}
    assert named.predictions["gd"] == {"class": 0, "share": 0.9}
    assert [note for note in named.notes if " answers " in note] == [
        "icl answers 'Positive' for every query",
        "gd answers 'Negative' for 90% of queries",
    ]
    assert [note for note in unnamed.notes if " answers " in note] == [
        "icl answers class 1 for every query",
        "gd answers class 0 for 90% of queries",
    ]


def test_f2t_subset_scores_the_queries_zs_misses_and_both_get_right():
    """f2t rows by hand from PREDS (ZS wrong, the method right, ICL right): GD's 0, 1, 3 and LCGD's 9; each metric
    on those rows by the plain formulas, the random baseline with each query's direction of the main table (drawn
    for every query, not redrawn for the subset's shape). A method that gets no query right has an empty subset:
    NaN, with notes."""
    records = build()
    out = scored(records, 0, subsets=("f2t",))
    zs, icl = records["zs"], records["icl"]
    r = torch.rand(zs.attn_out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method, rows in (("gd", [0, 1, 3]), ("lcgd", [9])):
        part = out.subsets["f2t"][method]
        ft = records[method]
        assert part["n"] == len(rows)
        h_zs, h_icl, h_ft = (r.attn_out[rows].double() for r in (zs, icl, ft))
        m_zs, m_icl, m_ft = (r.scores[rows].double() for r in (zs, icl, ft))
        check(part["metrics"]["simaou"], cos(h_icl - h_zs, h_ft - h_zs))
        check(part["metrics"]["random_simaou"], cos(unit(h_icl) - unit(h_zs), r[rows]))
        check(part["metrics"]["simam"], own_keys_cos(m_icl, m_ft, QUERY_LEN[rows]))
        check(part["metrics"]["simam_delta"], own_keys_cos(m_icl - m_zs, m_ft - m_zs, QUERY_LEN[rows]))
        assert part["metrics"]["rec2ftp"] == 100.0  # ICL gets every f2t query right
        assert "alpha" not in part["metrics"]
    assert scored(records, 0).subsets == {}

    never_right = build(PREDS | {"lcgd": (1 - LABELS).tolist()})
    empty = scored(never_right, 0, subsets=("f2t",))
    part = empty.subsets["f2t"]["lcgd"]
    assert part["n"] == 0 and math.isnan(part["metrics"]["simaou"]["mean"])
    assert math.isnan(empty.metrics["lcgd"]["rec2ftp"])
    assert "lcgd rec2ftp is undefined: lcgd fixes no query that ZS gets wrong" in empty.notes
    assert "f2t subset of lcgd is empty: its metrics are undefined" in empty.notes
    assert not any("subset of gd" in note for note in empty.notes)


def test_scores_json_keeps_every_field_and_reads_an_older_layout():
    """Through JSON text and back: equal to the scores written, the f2t subset at result.json's top level; a layout
    without the later entries reads with them empty; an unknown metric is refused by name."""
    out = scored(build(), 0, subsets=("f2t",))
    out.update_norm = {"gd": {"total": 2.5, "per_layer": [1.5, 1.0]}}
    out.lr = {"gd": 0.05, "lcgd": 0.2}
    data = json.loads(json.dumps(out.to_json()))
    assert data["f2t"]["gd"]["n"] == 3 and data["lr"] == {"gd": 0.05, "lcgd": 0.2}
    assert Scores.from_json(data) == out
    older = {key: data[key] for key in ("accuracy", "metrics", "per_head")} | {"unknown_subset": {}}
    read = Scores.from_json(older)
    assert (read.accuracy, read.metrics, read.per_head) == (out.accuracy, out.metrics, out.per_head)
    assert (read.predictions, read.resolution, read.subsets, read.notes, read.update_norm, read.lr) == (
        {},
        {},
        {},
        [],
        {},
        {},
    )
    assert check_metric("simam") == "simam"
    with pytest.raises(ValueError, match="unknown metric 'rec2ftp'"):
        check_metric("rec2ftp", PER_HEAD_METRICS)
