"""grafs exceptions. Every public error subclasses GrafsError, itself a ValueError."""
from __future__ import annotations


class GrafsError(ValueError):
    """Base class of every error grafs raises on bad input."""


class GrafsWarning(UserWarning):
    """Something worked but is likely not what the user wants (e.g. a search too short to learn)."""


class ParseError(GrafsError):
    """An activation expression (or search-space template) could not be parsed.

    ``line`` and ``column`` are 1-based; ``str(err)`` shows the offending line with a caret.
    """

    def __init__(self, message: str, text: str = "", line: int = 1, column: int = 1):
        self.reason = message
        self.text = text
        self.line = line
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.text:
            return self.reason
        lines = self.text.splitlines() or [""]
        src = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        if len(src) > 120:  # keep the caret readable on very long lines
            start = max(0, self.column - 60)
            shown = ("…" if start else "") + src[start:start + 120]
            caret_col = self.column - start + (1 if start else 0)
        else:
            shown, caret_col = src, self.column
        return (f"{self.reason} (line {self.line}, column {self.column})\n"
                f"  {shown}\n  {' ' * (caret_col - 1)}^")


class ArityError(ParseError):
    """A function was called with the wrong number of arguments."""


class UnknownFunctionError(ParseError):
    """A function name is not in the op registry."""


class CompileError(GrafsError):
    """An expression could not be lowered to the requested backend."""


class SearchSpaceError(GrafsError):
    """A search-space template or op set is invalid."""


class SearchError(GrafsError):
    """A search could not go on (e.g. a non-finite loss)."""


def warn(message: str, category: type[Warning] = GrafsWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside the grafs package (the user's
    line that called grafs.search, a Searcher method, ...), however deep inside grafs the
    warning arises."""
    import os
    import sys
    import warnings
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)
