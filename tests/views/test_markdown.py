"""`views/markdown.py`: a pipe table of formatted cells."""

from iclgd_lens.views.markdown import markdown_table


def test_a_pipe_table_has_its_header_rule_and_rows():
    table = markdown_table(["metric", "gd"], [["SimAOU", "0.120"], ["SimAM", "nan"]])
    assert table.splitlines() == ["| metric | gd |", "|---|---|", "| SimAOU | 0.120 |", "| SimAM | nan |"]
    assert markdown_table(["a"], []) == "| a |\n|---|"
