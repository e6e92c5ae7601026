"""What a hard compressor kept, as a self-contained HTML page: the original text of every segment, kept units
highlighted and dropped units struck through (from the result's ``.selections``), with the token accounting.

    open("view.html", "w").write(result.to_html())       # or: mmcompress compress doc.txt --html view.html
"""
from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

KEPT_BACKGROUND = "#b8f0b8"  # light green: kept units
DROPPED_COLOUR = "#c62828"  # red, struck through: dropped units

STYLE = f"""
body {{ font: 15px/1.6 system-ui, sans-serif; margin: 24px; max-width: 60em; color: #222; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.stats {{ color: #555; margin-bottom: 16px; }}
.segment {{ border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }}
.segment .label {{ font-size: 12px; color: #666; text-transform: uppercase; letter-spacing: .04em; }}
.body {{ white-space: pre-wrap; }}
.kept {{ background: {KEPT_BACKGROUND}; border-radius: 2px; }}
.dropped {{ color: {DROPPED_COLOUR}; text-decoration: line-through; }}
.verbatim {{ background: #dde8ff; }}
.image {{ color: #666; font-style: italic; }}
details pre {{ white-space: pre-wrap; background: #f6f6f6; padding: 8px; }}
.legend span {{ padding: 0 4px; }}
"""


def segment_html(text: str, spans: np.ndarray, kept: np.ndarray) -> str:
    """``text`` with each unit ``spans[i]`` wrapped as kept or dropped; text between units stays plain."""
    out, at = [], 0
    for (start, end), keep in sorted(zip(np.asarray(spans).tolist(), np.asarray(kept, dtype=bool).tolist())):
        start, end = max(start, at), max(end, at)
        if start > at:
            out.append(escape(text[at:start]))
        if end > start:
            cls = "kept" if keep else "dropped"
            out.append(f'<span class="{cls}">{escape(text[start:end])}</span>')
        at = end
    out.append(escape(text[at:]))
    return "".join(out)


def compressed_prompt_html(result: Any, title: str | None = None) -> str:
    """A standalone HTML page showing ``result`` (a :class:`~mmcompress.results.CompressedPrompt`)."""
    from .prompt import ImageSegment, Policy

    title = title or f"{result.method}: what was kept"
    stats = (f"{result.origin_tokens} &rarr; {result.compressed_tokens} tokens (rate {result.rate:.3f}, "
             f"{result.ratio:.2f}x) in {result.timings.get('total', 0.0):.2f} s")
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>", f'<div class="stats">{stats}</div>',
             '<div class="legend"><span class="kept">kept</span> <span class="dropped">dropped</span> '
             '<span class="verbatim">kept verbatim (instruction, question, keep=True)</span></div>']
    for i, (segment, selection) in enumerate(zip(result.original.segments, result.selections)):
        if isinstance(segment, ImageSegment) or selection is None:
            parts.append(f'<div class="segment" data-index="{i}"><div class="label">image</div>'
                         '<div class="body image">[image, passed through]</div></div>')
            continue
        units, kept_units = len(selection.kept), int(np.sum(selection.kept))
        label = f"{segment.role.value} &middot; {selection.unit} &middot; {kept_units}/{units} kept"
        if segment.policy is Policy.KEEP:
            body = f'<span class="verbatim">{escape(segment.text)}</span>'
        else:
            body = segment_html(segment.text, selection.spans, selection.kept)
        parts.append(f'<div class="segment" data-index="{i}" data-role="{segment.role.value}">'
                     f'<div class="label">{label}</div><div class="body">{body}</div></div>')
    parts.append(f"<details><summary>compressed prompt</summary><pre>{escape(result.text)}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
