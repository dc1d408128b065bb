"""Self-contained HTML pieces: tables, matplotlib figures as inline PNG, pages, and our sections
placed at the top of an Evidently report (one file, no external resources)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable

import pandas as pd

STYLE = """
<style>
#recsys-monitoring { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  max-width: 1200px; margin: 16px auto; padding: 0 16px; color: #1d2330; }
#recsys-monitoring h1 { font-size: 24px; margin: 12px 0; } #recsys-monitoring h2 { font-size: 19px; margin: 22px 0 8px; }
#recsys-monitoring table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
#recsys-monitoring th, #recsys-monitoring td { border: 1px solid #d5d9e0; padding: 4px 8px; text-align: right; }
#recsys-monitoring th { background: #f1f3f6; } #recsys-monitoring td:first-child, #recsys-monitoring th:first-child { text-align: left; }
#recsys-monitoring .bad { color: #b3261e; font-weight: 600; } #recsys-monitoring .good { color: #1b7f3b; font-weight: 600; }
#recsys-monitoring .note { color: #5b6475; font-size: 13px; } #recsys-monitoring img { max-width: 100%; }
#recsys-monitoring hr { border: 0; border-top: 1px solid #d5d9e0; margin: 24px 0; }
</style>
"""


def escape(value: object) -> str:
    return html.escape(str(value))


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def paragraph(text: str, css: str | None = None) -> str:
    return f"<p{f' class={css!r}' if css else ''}>{escape(text)}</p>"


def bullet_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def verdict(ok: bool, text: str) -> str:
    return f"<p class=\"{'good' if ok else 'bad'}\">{escape(text)}</p>"


def table(frame: pd.DataFrame, float_format: str = "{:.4g}", max_rows: int = 200, index: bool = False) -> str:
    """A plain HTML table (values escaped; floats formatted)."""
    shown = frame.head(max_rows)
    if index:
        shown = shown.reset_index()

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else float_format.format(value)
        if value is None or (not isinstance(value, (list, tuple, dict)) and pd.isna(value)):
            return ""
        return escape(value)

    head = "".join(f"<th>{escape(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in shown.itertuples(index=False, name=None))
    more = f"<p class='note'>{len(frame) - max_rows} more rows not shown</p>" if len(frame) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def figure(fig, alt: str = "") -> str:
    """A matplotlib figure as an inline PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}"/>'


def section(*parts: str) -> str:
    return "".join(parts)


def page(title: str, body: str) -> str:
    """A standalone page."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"{STYLE}</head><body><div id='recsys-monitoring'>{heading(title, 1)}{body}</div></body></html>\n")


def with_sections(evidently_html: str, title: str, body: str) -> str:
    """Evidently's self-contained report with our sections on top (inside its <body>)."""
    block = f"{STYLE}<div id='recsys-monitoring'>{heading(title, 1)}{body}<hr/></div>"
    lower = evidently_html.lower()
    at = lower.find("<body")
    if at >= 0:
        close = lower.find(">", at)
        if close >= 0:
            return evidently_html[: close + 1] + block + evidently_html[close + 1:]
    # Unknown template: embed the report instead (still one self-contained file).
    frame = html.escape(evidently_html, quote=True)
    return page(title, body + f"<iframe style='width:100%;height:2400px;border:0' srcdoc=\"{frame}\"></iframe>")
