"""Griffe extension for the API docs (mkdocs.yml): Sphinx roles in docstrings as code.

grafs' docstrings name other objects Sphinx-style (``:class:`RelaxedCell```, ``:func:`~grafs.search```);
mkdocstrings renders Markdown, where those would show as literal ``:class:`` text. They become
code spans (``RelaxedCell``, ``search``), not links: the targets are often relative names that
cannot be resolved reliably, and an unresolved link would fail the strict build.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`~?([^`]+)`")


def strip_roles(text: str) -> str:
    """``:class:`~a.B``` -> ```B```, ``:func:`f``` -> ```f```."""
    def code(m: re.Match) -> str:
        target = m.group(1)
        if m.group(0).split("`", 1)[1].startswith("~"):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"
    return _ROLE.sub(code, text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
