"""The HTML report rendered in a real headless Chromium with networking disabled: circuitsvis drawn outside its own
script text, not blank, nothing remote, a foreign file never replaced."""

import re
import shutil
import subprocess

import pytest

from iclgd_lens.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_renders_offline_in_chromium(saved, tmp_path):
    html = tmp_path / "report.html"
    assert main(["report", str(saved / "s0"), str(saved / "s1"), "--html", str(html), "--threads", "1"]) == 0
    text = html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)  # no remote script, style or image
    assert "<link" not in text and text.count("var CircuitsVis=") == 1
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=8000",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    rendered = re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S)  # the bundle's own text left out
    assert "Head Selector" in rendered  # circuitsvis rendered its component into the page
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert (pixels < 0.9).any(-1).mean() > 0.02  # not blank: text, tables and figures drawn
    # a second report into the same file needs --overwrite; a file the toolkit did not write is never replaced
    assert main(["report", str(saved / "s0"), "--html", str(html), "--no-views"]) == 2
    foreign = tmp_path / "mine.html"
    foreign.write_text("<html>mine</html>")
    assert main(["report", str(saved / "s0"), "--html", str(foreign), "--no-views", "--overwrite"]) == 2
    assert foreign.read_text() == "<html>mine</html>"


def test_notes_are_grouped_by_subject_and_folded_and_verdicts_coloured():
    import pandas as pd

    from iclgd_lens.views.report import folded_notes, verdict_table

    html = folded_notes(["ICL answers one class", "no_training: gd: a zero update", "no_training: lcgd: another"])
    assert html.count("<details>") == 2
    assert "1 note on the trained model" in html and "2 notes on no_training" in html
    assert "<li class=note>gd: a zero update</li>" in html
    table = verdict_table(pd.DataFrame({"measure": ["a", "b", "c"], "verdict": ["above", "below", "too few runs"]}))
    assert '<td class="above">above</td>' in table and '<td class="below">below</td>' in table
    assert "<td>too few runs</td>" in table
