"""The report's small HTML kit: escaping, tables, embedded figures, sections and the page's stylesheet.

Every figure is a data URI (and a PNG under ``figures/``), so the page is one self-contained file.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from matplotlib.figure import Figure

from nntune import atomic
from nntune.reporting import plots

__all__ = ["CSS", "Figures", "Section", "escape", "section_html", "table"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.answer{background:#f3f7fb;border-left:4px solid #3b82c4;padding:.6em .9em}
.note{color:#666;font-style:italic}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:.85em}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}th{background:#f5f5f5}
.verdict{background:#f1f8f1;border-left:4px solid #3c9a3c;padding:.6em .9em}
h3{font-size:1em;margin-top:1.4em}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}nav ol{columns:2}
"""


@dataclass
class Section:
    """One section of the page: its heading, the highlighted answer (HTML) and the blocks below it."""

    title: str
    answer: str
    body: list[str] = field(default_factory=list)


class Figures:
    """Collects figures: saves each as PNG under ``figures/`` and returns an embedded ``<img>``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "figures"
        self.directory.mkdir(parents=True, exist_ok=True)

    def embed(self, fig: Figure, name: str, alt: str) -> str:
        data = plots.png(fig, dpi=100)
        atomic.write_bytes(self.directory / f"{name}.png", data)
        return (f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}"><figcaption>{escape(alt)}</figcaption></figure>')


def table(rows: list[dict], columns: list[str] | None = None, limit: int | None = None) -> str:
    """An HTML table of ``rows`` (floats to 4 significant digits), at most ``limit`` rows shown."""
    if not rows:
        return "<p><i>none</i></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for r in rows[:limit]:
        cells = []
        for c in columns:
            v = r.get(c, "")
            text = f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
            cells.append(f"<td>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p><i>{len(rows) - limit} more rows in trials.csv</i></p>" if limit and len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def section_html(anchor: str, heading: str, section: Section) -> str:
    """A ``<section>`` with its id, an already escaped heading, the answer box and the body blocks."""
    return (f"<section id='{anchor}'><h2>{heading}</h2><div class='answer'>{section.answer}</div>"
            + "".join(section.body) + "</section>")
