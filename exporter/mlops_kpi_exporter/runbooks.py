"""The alert runbooks as one HTML page, served at `/runbooks`.

The text is data/runbooks.md (the README's "### Runbooks" section holds the same text; a test keeps
them equal). Only the markdown that file uses is understood: `#### Heading` lines, paragraphs,
**bold** and `code`. The page is self-contained (no script, nothing fetched), so it opens from an
alert in chat or the pager on any network that reaches the exporter.
"""

from __future__ import annotations

import functools
import html
import re
from importlib import resources

HEADING = re.compile(r"^#{1,6} +(.+)$")
CODE = re.compile(r"(`[^`]+`)")
BOLD = re.compile(r"\*\*(.+?)\*\*")


def source() -> str:
    return resources.files("mlops_kpi_exporter").joinpath("data/runbooks.md").read_text("utf-8")


def anchor(title: str) -> str:
    """GitHub's heading anchors: the rules' runbook_url fragments work on the README and here alike."""
    return re.sub(r"[^a-z0-9 _-]", "", title.strip().lower()).replace(" ", "-")


def inline(text: str) -> str:
    parts = []
    for part in CODE.split(text):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            parts.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            parts.append(BOLD.sub(r"<strong>\1</strong>", html.escape(part)))
    return "".join(parts)


def render(markdown: str) -> str:
    blocks, paragraph = [], []

    def flush() -> None:
        if paragraph:
            blocks.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    for line in markdown.splitlines():
        heading = HEADING.match(line.strip())
        if heading:
            flush()
            title = heading.group(1).strip()
            blocks.append(f'<h2 id="{html.escape(anchor(title))}">{html.escape(title)}</h2>')
        elif line.strip():
            paragraph.append(line.strip())
        else:
            flush()
    flush()
    body = "\n".join(blocks)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlops-kpi-exporter runbooks</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:50em}}h2:target{{background:#ffd}}</style></head>
<body><h1>Alert runbooks</h1>
<p><a href="/">exporter</a></p>
{body}
</body></html>
"""


@functools.cache
def page() -> bytes:
    """Rendered once per process: the text ships with the package and never changes while it runs."""
    return render(source()).encode("utf-8")
