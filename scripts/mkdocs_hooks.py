"""mkdocs hook (mkdocs.yml ``hooks:``): a docs page can include a section of the README.

A line ``<!-- readme: Architecture -->`` in a page is replaced by the body of the README's
section with that heading (up to the next heading of the same or a higher level), so text that
lives in the README is not copied into docs/ and cannot drift. Links into ``docs/`` are made
relative to the including page; a missing section fails the build.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

_INCLUDE = re.compile(r"^<!-- readme: (.+?) -->[ \t]*$", re.M)
_HEADING = re.compile(r"^(#{1,6}) +(.+?)\s*$")
_DOCS_LINK = re.compile(r"\]\(docs/([^)\s]+)\)")


def readme_section(text: str, title: str) -> str:
    """The lines under the heading ``title`` up to the next heading of its level or higher."""
    lines = text.splitlines()
    in_code = False
    start = level = None
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else _HEADING.match(line)
        if m is None:
            continue
        if start is None and m.group(2) == title:
            start, level = i + 1, len(m.group(1))
        elif start is not None and len(m.group(1)) <= level:
            return "\n".join(lines[start:i]).strip("\n")
    if start is None:
        raise PluginError(f"README.md has no section {title!r} (included by a docs page)")
    return "\n".join(lines[start:]).strip("\n")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- readme:" not in markdown:
        return markdown
    readme = (Path(config["config_file_path"]).parent / "README.md").read_text(encoding="utf-8")
    page_dir = posixpath.dirname(page.file.src_uri)

    def include(m: re.Match) -> str:
        body = readme_section(readme, m.group(1))
        return _DOCS_LINK.sub(lambda l: f"]({posixpath.relpath(l.group(1), page_dir or '.')})", body)

    return _INCLUDE.sub(include, markdown)
