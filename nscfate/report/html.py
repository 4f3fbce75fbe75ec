"""HTML building blocks of a report: sections, tables and embedded images, one file with no
outside reference (every figure a ``data:`` URI, the style inline)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from nscfate.report.figures import data_uri

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top} figcaption{font-size:.85em;color:#555}
img{max-width:100%} .note{color:#555;font-size:.9em} code{background:#f4f4f4;padding:0 .2em}
"""


@dataclass
class Section:
    """One ``<section id=...>`` of the report, with its heading and body HTML."""

    id: str
    title: str
    body: str

    def render(self) -> str:
        """The section as HTML."""
        return (
            f'<section id="{self.id}">\n<h2>{html.escape(self.title)}</h2>\n{self.body}\n</section>'
        )


def page(title: str, subtitle: str, sections: Iterable[Section]) -> str:
    """The whole self-contained HTML document, with a table of contents."""
    sections = list(sections)
    toc = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(subtitle)}</p>"
        f"<nav><ol>{toc}</ol></nav>\n{body}\n</body></html>\n"
    )


def paragraph(text: str, note: bool = False) -> str:
    """A paragraph of escaped text."""
    return f"<p{' class=note' if note else ''}>{html.escape(text)}</p>"


def image(png: bytes, caption: str) -> str:
    """An embedded PNG with a caption."""
    alt = html.escape(caption)
    return f'<figure><img src="{data_uri(png)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _cell(value: object, digits: int) -> str:
    if isinstance(value, float):
        return f'<td class="num">{"" if pd.isna(value) else f"{value:.{digits}f}"}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(rows: Sequence[Sequence[object]], header: Sequence[str], digits: int = 3) -> str:
    """An HTML table; floats shown with ``digits`` decimals."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, digits) for v in row) + "</tr>" for row in rows)
    return (
        f'<div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def frame(df: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as an HTML table."""
    rows = [[v.item() if hasattr(v, "item") else v for v in row] for row in df.itertuples(False)]
    return table(rows, [str(c) for c in df.columns], digits)
