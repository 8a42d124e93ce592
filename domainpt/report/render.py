"""Render a report (a list of sections) to Markdown and to self-contained HTML (images inlined)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    paragraphs: list = field(default_factory=list)
    table: tuple | None = None  # (header list, rows list)
    images: list = field(default_factory=list)  # (alt, path)
    code: str | None = None


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.table:
            head, rows = s.table
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
            out.append("")
        for alt, path in s.images:
            out += [f"![{alt}]({Path(path).name})", ""]
        if s.code:
            out += ["```", s.code.rstrip(), "```", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f2f2f2}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"""


def to_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        out += [f"<p>{e(p).replace('**', '')}</p>" for p in s.paragraphs]
        if s.table:
            head, rows = s.table
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c)).replace('**', '')}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        for alt, path in s.images:
            data = base64.b64encode(Path(path).read_bytes()).decode()
            out.append(f"<img alt='{e(alt)}' src='data:image/png;base64,{data}'>")
        if s.code:
            out.append(f"<pre>{e(s.code)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
