"""A report as data: sections of text, tables, images and code, rendered to Markdown and to standalone HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Text:
    """A paragraph (plain text; ``code`` spans in backticks are kept as such in Markdown)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table of already-formatted cells; ``align`` has one ``"l"`` or ``"r"`` per column (default: all left)."""

    headers: list[str]
    rows: list[list[str]]
    align: str = ""

    def markdown(self) -> str:
        """The table as GitHub Markdown."""
        align = self.align or "l" * len(self.headers)
        rule = ["---:" if a == "r" else "---" for a in align]
        lines = [_md_row(self.headers), _md_row(rule)] + [_md_row(r) for r in self.rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class Image:
    """A PNG in the report directory, referenced by file name."""

    file: str
    caption: str


@dataclass(frozen=True)
class Code:
    """Preformatted text (a summary printout, a command)."""

    text: str


Block = Text | Table | Image | Code


@dataclass
class Section:
    """A titled part of the report; ``data`` is what the section contributes to ``report.json`` under ``key``."""

    title: str
    key: str
    blocks: list[Block] = field(default_factory=list)
    data: Any = None


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(title: str, sections: list[Section]) -> str:
    """The whole report as Markdown."""
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(block.text)
            elif isinstance(block, Table):
                parts.append(block.markdown())
            elif isinstance(block, Image):
                parts.append(f"![{block.caption}]({block.file})")
            else:
                parts.append(f"```\n{block.text}\n```")
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px}th{background:#f3f3f3}
.r{text-align:right;font-variant-numeric:tabular-nums}.l{text-align:left}pre{background:#f6f6f6;padding:1em;overflow-x:auto}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}"""


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        align = block.align or "l" * len(block.headers)
        head = "".join(f'<th class="{a}">{html.escape(h)}</th>' for a, h in zip(align, block.headers, strict=True))
        body = "".join("<tr>" + "".join(f'<td class="{a}">{html.escape(c)}</td>' for a, c in zip(align, row,
                                                                                                 strict=True))
                       + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Image):
        return (f'<figure><img src="{html.escape(block.file)}" alt="{html.escape(block.caption)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return f"<pre>{html.escape(block.text)}</pre>"


def render_html(title: str, sections: list[Section]) -> str:
    """The whole report as one HTML page (images referenced by relative file name)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(b) for b in section.blocks]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
