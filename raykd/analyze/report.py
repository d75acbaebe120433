"""The report as a document (sections of text, tables and plots) and its writers.

Formats: ``md`` (``report.md``, plots linked from ``plots/``), ``html`` (``report.html``,
one self-contained page, plots embedded as base64 PNG), ``tex`` (``report.tex``, a
standalone document with every table, and ``tex/NAME.tex``, each table alone to
``\\input``), ``csv`` (``csv/NAME.csv``, the raw numbers of every table) and ``png``
(``plots/NAME.png``; implied by ``md``).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from raykd.analyze.verdict import Verdict
from raykd.errors import UserError

FORMATS = ("md", "html", "tex", "csv", "png")


@dataclass
class Text:
    """A paragraph; ``code`` in backticks is set as code."""

    text: str


@dataclass
class Bullets:
    """A bulleted list of short lines."""

    items: list[str]


@dataclass
class Table:
    """A table: ``display`` holds the formatted cells, ``raw`` the numbers for the CSV."""

    name: str
    title: str
    display: pd.DataFrame
    raw: pd.DataFrame
    caption: str = ""


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    caption: str = ""


Block = Text | Bullets | Table | Plot


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]

    def blocks(self, kind: type) -> list:
        """Every block of type ``kind``, in document order."""
        return [b for s in self.sections for b in s.blocks if isinstance(b, kind)]


def parse_formats(text: str) -> list[str]:
    """``md,html`` -> the formats to write (``md`` brings ``png``, which it links to)."""
    wanted = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise UserError(f"unknown format {', '.join(unknown) or repr(text)}; expected some of {','.join(FORMATS)}",
                        key="--format")
    if "md" in wanted and "png" not in wanted:
        wanted.append("png")
    return [f for f in FORMATS if f in wanted]


def write(report: Report, out: Path, formats: Iterable[str]) -> list[Path]:
    """Write ``report`` under ``out`` in ``formats``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    formats = list(formats)
    written: list[Path] = []
    if "png" in formats:
        (out / "plots").mkdir(exist_ok=True)
        for plot in report.blocks(Plot):
            written.append(_write_bytes(out / "plots" / f"{plot.name}.png", plot.png))
    if "csv" in formats:
        (out / "csv").mkdir(exist_ok=True)
        for table in report.blocks(Table):
            path = out / "csv" / f"{table.name}.csv"
            table.raw.to_csv(path, index=False)
            written.append(path)
    if "md" in formats:
        written.append(_write_text(out / "report.md", markdown(report)))
    if "html" in formats:
        written.append(_write_text(out / "report.html", to_html(report)))
    if "tex" in formats:
        (out / "tex").mkdir(exist_ok=True)
        for table in report.blocks(Table):
            written.append(_write_text(out / "tex" / f"{table.name}.tex", latex_table(table)))
        written.append(_write_text(out / "report.tex", latex(report)))
    return written


SUMMARY_FILE = "summary.json"


def write_summary(verdict: Verdict, out: Path) -> Path:
    """``out/summary.json``: the verdict (best, baseline, delta, fidelity) for scripts."""
    return _write_text(out / SUMMARY_FILE, json.dumps(verdict.to_json(), indent=2) + "\n")


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- Markdown ---------------------------------------------------------------------------


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (GitHub-flavoured Markdown)."""
    header = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                lines += [f"### {block.title}", ""]
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                lines += [markdown_table(block.display), ""]
            else:
                lines += [f"### {block.title}", "", f"![{block.title}](plots/{block.name}.png)", ""]
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
    return "\n".join(lines)


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { border-bottom: 2px solid #444; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; color: #555; font-style: italic; padding-bottom: 4px; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 3px; margin-top: 1.8em; }
"""


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def html_table(table: Table) -> str:
    frame = table.display
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    toc = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(report.sections))
    parts.append(f"<ul>{toc}</ul>")
    for i, section in enumerate(report.sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
            elif isinstance(block, Table):
                parts.append(f"<h3>{html.escape(block.title)}</h3>{html_table(block)}")
            else:
                data = base64.b64encode(block.png).decode()
                caption = f"<p><em>{_inline(block.caption)}</em></p>" if block.caption else ""
                parts.append(f"<h3>{html.escape(block.title)}</h3>"
                             f"<img alt='{html.escape(block.title)}' src='data:image/png;base64,{data}'>{caption}")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- LaTeX ------------------------------------------------------------------------------

_TEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                "±": r"$\pm$", "∈": r"$\in$", "–": "--", "—": "---", "Δ": r"$\Delta$", "α": r"$\alpha$",
                "β": r"$\beta$", "→": r"$\to$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$"}


def tex_escape(text: object) -> str:
    """``text`` with LaTeX's special characters (and the few symbols tables use) escaped."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(table: Table, label_prefix: str = "tab:") -> str:
    """A ``table`` environment with a booktabs ``tabular`` of the display cells, shrunk to the
    line width when wider (needs ``\\usepackage{booktabs,adjustbox}``)."""
    frame = table.display
    align = "l" + "r" * (len(frame.columns) - 1)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(table.title)}{('. ' + tex_escape(table.caption)) if table.caption else ''}}}",
             rf"\label{{{label_prefix}{table.name}}}", r"\begin{adjustbox}{max width=\linewidth}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(tex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{adjustbox}", r"\end{table}", ""]
    return "\n".join(lines)


def latex(report: Report) -> str:
    """A standalone document (``article`` + ``booktabs`` + ``adjustbox``) with every table of the report."""
    head = [r"\documentclass{article}", r"\usepackage[margin=2cm]{geometry}", r"\usepackage{booktabs}",
            r"\usepackage{adjustbox}",
            r"\usepackage[T1]{fontenc}", r"\usepackage[utf8]{inputenc}", r"\begin{document}",
            rf"\section*{{{tex_escape(report.title)}}}"]
    body = []
    for section in report.sections:
        tables: Sequence[Table] = [b for b in section.blocks if isinstance(b, Table)]
        if tables:
            body.append(rf"\subsection*{{{tex_escape(section.title)}}}")
            body += [latex_table(t) for t in tables]
            body.append(r"\clearpage" if len(tables) > 3 else "")
    return "\n".join(head + body + [r"\end{document}", ""])
