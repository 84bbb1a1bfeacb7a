"""Offline circuitsvis: its bundled JavaScript inlined once per page, components rendered into plain divs.

circuitsvis' own `render` inlines its 1.3 MB bundle into every figure, and in a notebook it first pings a web
site to decide whether to load the bundle from a CDN instead (blank offline). Here the bundle, read from the
installed package (its source-map comment removed, so that no browser asks for the map), goes into one classic
script that defines the global `CircuitsVis`; each component is a div and a small script that renders into it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from pathlib import Path
from uuid import uuid4

from circuitsvis.utils.convert_props import convert_props


@lru_cache(maxsize=1)
def circuitsvis_script() -> str:
    """The `<script>` that defines CircuitsVis, from the installed package's bundle."""
    import circuitsvis

    bundle = (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
    bundle = re.sub(r"//# sourceMappingURL=\S+\s*$", "", bundle).replace("</script>", "<\\/script>")
    return f"<script>{bundle}</script>"


def component(name: str, **props) -> str:
    """A circuitsvis component (e.g. "AttentionHeads", "ColoredTokensMulti") as a div that renders itself once
    the page's circuitsvis script has run."""
    uid = f"circuits-vis-{uuid4().hex[:12]}"
    props_json = convert_props(props).replace("</", "<\\/")  # a token such as "</s>" must not end the script
    return (
        f'<div id="{uid}" class="circuitsvis" style="margin: 8px 0;"></div>'
        f'<script>CircuitsVis.render("{uid}", CircuitsVis.{name}, {props_json});</script>'
    )


class Html:
    """A block of HTML that shows itself in a notebook (its own copy of the circuitsvis script, once for the
    whole block) and goes into a page with `body` (the page includes the script once)."""

    def __init__(self, body: str, uses_circuitsvis: bool = True) -> None:
        self.body = body
        self.uses_circuitsvis = uses_circuitsvis

    def _repr_html_(self) -> str:
        return (circuitsvis_script() if self.uses_circuitsvis else "") + self.body

    def __str__(self) -> str:
        return self._repr_html_()


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def grid(cells: list[tuple[str, str]], columns: int) -> str:
    """Cells (title, html) side by side, `columns` per row."""
    items = "".join(
        f'<div style="min-width: 0;"><div style="font-weight: 600;">{escape(title)}</div>{html}</div>'
        for title, html in cells
    )
    grid = f"display: grid; grid-template-columns: repeat({columns}, minmax(0, 1fr)); gap: 12px;"
    return f'<div style="{grid}">{items}</div>'
