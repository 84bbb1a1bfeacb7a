"""Views, plots and the HTML report, from saved result folders (plus the model for on-demand patterns); the
report rendered in a real headless Chromium with networking disabled."""

import re
import shutil
import subprocess

import pytest
import torch

from iclgd_lens import Result, compare, load_model, load_task
from iclgd_lens.analysis.patterns import record_patterns
from iclgd_lens.cli import main
from iclgd_lens.views.attention import attention_view, score_change_view
from iclgd_lens.views.plots import head_heatmaps, per_layer_plot, save_figure

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-icl", device="cpu")


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    task = load_task("synth-sst2")
    for seed in (0, 1):
        compare(tiny, task, k=6, seed=seed, lr=0.3, n_eval=8, baselines=("no_training",), out=root / f"s{seed}",
                progress=False)  # fmt: skip
    return root


def test_patterns_match_a_full_forward_and_collapse_by_sums(tiny, saved):
    result = Result.load(saved / "s0")
    collapsed = record_patterns(tiny, result, query=2)
    full = record_patterns(tiny, result, query=2, collapse=False)
    episode = result.episode
    n_q = collapsed.n_query_tokens
    assert n_q == len(episode.queries[2]) and collapsed.layers == [0, 1]
    for setting in ("zs", "icl", "gd", "lcgd"):
        rows = collapsed.attention[setting][:, :, -n_q:, :]
        torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))  # every query row sums to one
    # independent: the ICL pattern of the whole prompt from run_with_cache
    tokens = torch.tensor([[*episode.icl_prefix, *episode.queries[2]]])
    _, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    expected = cache["pattern", 1][0, :, -n_q:, :]  # [head, query rows, every key]
    torch.testing.assert_close(full.attention["icl"][1, :, -n_q:, :], expected)
    # a demonstration's column is the sum of its tokens' and separator's columns
    spans = [len(d) + len(episode.separator) for d in episode.demos]
    start = 1
    for j, length in enumerate(spans):
        summed = full.attention["icl"][..., -n_q:, start : start + length].sum(-1)
        torch.testing.assert_close(collapsed.attention["icl"][..., -n_q:, 1 + j], summed)
        start += length
    assert collapsed.attention["zs"][..., 1 : 1 + len(spans)].abs().sum() == 0  # no demonstrations in ZS
    assert collapsed.tokens[:2] == ["<bos>", "[demo 1]"] and len(collapsed.tokens) == 1 + len(spans) + n_q


def test_views_from_a_saved_folder(tiny, saved):
    result = Result.load(saved / "s0")
    changes = score_change_view(result, query=1)  # no model: ids as token labels
    assert changes.body.count('class="circuitsvis"') == 2 * 3  # layers x (ICL, GD, LCGD)
    html = attention_view(record_patterns(tiny, result, 1))._repr_html_()
    assert html.count("<script>var CircuitsVis") == 0 and html.count("var CircuitsVis=") == 1  # the bundle once
    assert html.count('class="circuitsvis"') == 2 * 4 and "AttentionHeads" in html
    with pytest.raises(ValueError, match="out of range"):
        score_change_view(result, query=99)


def test_plots_from_saved_folders(saved, tmp_path):
    results = [Result.load(saved / f"s{seed}") for seed in (0, 1)]
    for name, fig in (("curves.svg", per_layer_plot(results, "simam_delta")),
                      ("heads.png", head_heatmaps(results[0], methods=("gd", "lcgd", "no_training/gd")))):  # fmt: skip
        save_figure(fig, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5000
    svg = (tmp_path / "curves.svg").read_text()
    assert "synth-sst2" in svg and "<dc:date>" not in svg  # no timestamp: the same data gives the same file


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_renders_offline_in_chromium(saved, tmp_path):
    html = tmp_path / "report.html"
    assert main(["report", str(saved / "s0"), str(saved / "s1"), "--html", str(html), "--threads", "1"]) == 0
    text = html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)  # no remote script, style or image
    assert "<link" not in text and text.count("var CircuitsVis=") == 1
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]  # fmt: skip
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    rendered = re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S)  # the bundle's own text left out
    assert "Head Selector" in rendered  # circuitsvis rendered its component into the page
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert (pixels < 0.9).any(-1).mean() > 0.02  # not blank: text, tables and figures drawn
    # a second report into the same file needs --overwrite; a file the toolkit did not write is never replaced
    assert main(["report", str(saved / "s0"), "--html", str(html), "--no-views"]) == 2
    foreign = tmp_path / "mine.html"
    foreign.write_text("<html>mine</html>")
    assert main(["report", str(saved / "s0"), "--html", str(foreign), "--no-views", "--overwrite"]) == 2
    assert foreign.read_text() == "<html>mine</html>"
