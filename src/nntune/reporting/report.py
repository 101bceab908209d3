"""The HTML report: one section per seed question, each with this dataset's answer and its evidence.

Built from a run directory alone (``result.json``, the study in its storage, ``best/``), so ``nntune report DIR``
rebuilds it without retraining. Figures are embedded as data URIs, so ``report.html`` is one self-contained file
that opens offline; the same figures are also written as PNG files under ``DIR/figures/``.
"""

from __future__ import annotations

from pathlib import Path

from nntune import atomic
from nntune.reporting.html import CSS, Figures, escape, section_html
from nntune.reporting.questions import QUESTIONS, question_sections
from nntune.reporting.run_view import load_run
from nntune.reporting.search_sections import extra_sections

__all__ = ["QUESTIONS", "build_report"]


def build_report(directory: str | Path) -> Path:
    """Write ``DIR/report.html`` (self-contained) and ``DIR/figures/*.png`` from a run directory."""
    view = load_run(directory)
    figs = Figures(view.directory)
    sections = question_sections(view, figs)
    extras = extra_sections(view, figs)
    data = view.result["data"]
    title = f"nntune report: {data['name']} ({data['task']})"
    nav = "".join(f'<li><a href="#q{i}">{escape(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    nav += "".join(f'<li><a href="#x{i}">{escape(s.title)}</a></li>' for i, s in enumerate(extras, 1))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>",
             f"<p>{'Search' if view.kind == 'tune' else 'Single training run'} on {data.get('n_train', '?')} "
             f"training, {data.get('n_val', '?')} validation and {data.get('n_test', '?')} test samples; input "
             f"{'x'.join(map(str, data['input_shape']))}. Test {view.metric}: "
             f"<b>{view.result['test'].get(view.metric, float('nan')):.4f}</b>.</p><nav><ol>{nav}</ol></nav>"]
    parts += [section_html(f"q{i}", f"{i}. {escape(s.title)}", s) for i, s in enumerate(sections, 1)]
    parts += [section_html(f"x{i}", escape(s.title), s) for i, s in enumerate(extras, 1)]
    parts.append("</body></html>")
    path = view.directory / "report.html"
    atomic.write_text(path, "\n".join(parts))
    return path
