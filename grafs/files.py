"""The files grafs writes and reads back: where its caches live, atomic writes, clear errors.

Every file grafs writes goes through :func:`atomic_write` (or its text, JSON and torch
spellings): the bytes go to a temporary sibling ``<name>.<pid>@<host>.tmp``, are flushed to
disk, and replace the file in one ``os.replace``, so a reader sees the old file or the new
one, never a part. A write that fails (disk full, a read-only directory, an error while
serialising) removes its temporary file and raises a :class:`~grafs.errors.GrafsError` that
names the file, the reason and what to do; the old file is untouched. A process killed while
writing cannot clean up after itself: the next write of the same file removes the temporary
files of processes of this host that no longer run.

Reads that must not fail silently (a checkpoint to resume, a saved result) use
:func:`torch_load` and :func:`read_json`: any unusable file (missing, empty, truncated, random
bytes, a file of another kind, no permission) is a GrafsError naming the file. Files of
caches are read by their owners, who build the entry again when it is unusable.

The cache directory (:func:`cache_dir`): ``$GRAFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/grafs``,
else ``~/.cache/grafs``; the generated Python sources live in its ``generated`` folder, the
C libraries in ``c``.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, BinaryIO, Callable

from grafs.errors import GrafsError

__all__ = ["cache_dir", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "atomic_torch_save", "torch_load", "read_json", "read_error",
           "write_error", "os_reason", "temp_path", "sweep_stale_temps", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def cache_dir(sub: str | None = None) -> Path:
    """grafs' cache directory (not created here), or its folder ``sub``."""
    root = os.environ.get("GRAFS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "grafs")
    return Path(root) / sub if sub else Path(root)


# -- messages ----------------------------------------------------------------------------------
def os_reason(err: BaseException) -> str:
    """What an OSError means for the user, in a few words."""
    no = getattr(err, "errno", None)
    if no in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({os.strerror(no)})"
    if no == errno.EROFS:
        return "the file system is read-only"
    if no in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if no == errno.ENOENT:
        return "no such file or directory"
    if no == errno.EISDIR:
        return "it is a directory"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return text.splitlines()[0][:200]


def _write_advice(err: BaseException) -> str:
    no = getattr(err, "errno", None)
    if no in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space or write to another directory"
    if no in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the directory writable or write to another directory"
    return "check the directory or write to another one"


def write_error(path: str | os.PathLike, what: str, err: BaseException,
                advice: str | None = None) -> GrafsError:
    """The GrafsError for a failed write of ``what`` at ``path``."""
    reason = os_reason(err) if isinstance(err, OSError) else \
        f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    return GrafsError(f"cannot write {what} {path}: {reason}; {_write_advice(err)}"
                      + (f"; {advice}" if advice else ""))


def read_error(path: str | os.PathLike, what: str, problem: str, advice: str) -> GrafsError:
    """The GrafsError for an unusable ``what`` at ``path``: what is wrong, what to do."""
    return GrafsError(f"cannot read {what} {path}: {problem}; {advice}")


# -- writing -----------------------------------------------------------------------------------
def temp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling this process writes ``path`` through."""
    p = Path(path)
    return p.with_name(f"{p.name}.{os.getpid()}@{_HOST}{TEMP_SUFFIX}")


def _alive(pid: int) -> bool:
    if os.name == "nt":     # (os.kill would end the process there): never swept
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:         # another user's process: alive
        return True
    return True


def sweep_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary files of ``path`` that processes of this host left when they were
    killed while writing it (a process still running keeps its own)."""
    p = Path(path)
    try:
        siblings = list(p.parent.glob(f"{p.name}.*@{_HOST}{TEMP_SUFFIX}"))
    except OSError:
        return
    for t in siblings:
        pid = t.name[len(p.name) + 1:].partition("@")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                t.unlink()
            except OSError:
                pass


class _Recorder:
    """A binary file that remembers the first OSError of a write (torch.save turns it into a
    RuntimeError that no longer says the disk was full)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], what: str = "file",
                 advice: str | None = None) -> Path:
    """Write ``path`` all at once: ``write(f)`` fills a temporary sibling, which then replaces
    ``path``; on any failure the temporary file is removed, ``path`` is as it was, and the
    error is a GrafsError naming the file (``advice``: what else the user should know, e.g.
    that the last checkpoint is kept)."""
    p = Path(path)
    tmp = temp_path(p)
    rec = None
    try:
        sweep_stale_temps(p)
        with open(tmp, "wb") as f:
            rec = _Recorder(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(err, Exception) or isinstance(err, GrafsError):
            raise
        cause = rec.error if rec is not None and rec.error is not None else err
        raise write_error(p, what, cause, advice) from None
    return p


def atomic_write_bytes(path, data: bytes, what: str = "file", advice: str | None = None) -> Path:
    return atomic_write(path, lambda f: f.write(data), what, advice)


def atomic_write_text(path, text: str, what: str = "file", advice: str | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what, advice)


def atomic_write_json(path, obj, what: str = "file", advice: str | None = None, **dump) -> Path:
    return atomic_write_text(path, json.dumps(obj, **dump), what, advice)


def atomic_torch_save(obj, path, what: str = "file", advice: str | None = None) -> Path:
    import torch
    return atomic_write(path, lambda f: torch.save(obj, f), what, advice)


# -- reading -----------------------------------------------------------------------------------
def _open_problem(err: OSError) -> str:
    return "no such file" if isinstance(err, FileNotFoundError) else os_reason(err)


def read_json(path: str | os.PathLike, what: str, advice: str, kind: type | None = None,
              missing: str | None = None, expected: str | None = None) -> Any:
    """The JSON value in ``path`` (of type ``kind`` when given), or a GrafsError naming the
    file and what is wrong with it (``missing``: the advice when there is no file;
    ``expected``: what the file should be, e.g. "a grafs search result")."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise read_error(p, what, _open_problem(err),
                         missing if missing and isinstance(err, FileNotFoundError) else advice
                         ) from None
    expected = expected or f"{what} file"
    if not data.strip():
        raise read_error(p, what, "the file is empty", advice)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise read_error(p, what, f"it is not {expected} (not JSON: truncated or corrupt, "
                                  f"{str(err).splitlines()[0][:120]})", advice) from None
    if kind is not None and not isinstance(value, kind):
        names = {dict: "an object", list: "a list"}
        raise read_error(p, what, f"it is not {expected} (a JSON {type(value).__name__} where "
                                  f"{names.get(kind, kind.__name__)} belongs: a file of another "
                                  f"kind)", advice)
    return value


def torch_load(path: str | os.PathLike, what: str, advice: str, map_location=None,
               missing: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)``, with every failure (missing, empty, truncated,
    random bytes, objects other than tensors and containers, no permission) a GrafsError that
    names the file and what is wrong (never torch's advice to load it unsafely)."""
    import pickle

    import torch
    p = Path(path)
    try:
        f = open(p, "rb")
        size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise read_error(p, what, _open_problem(err),
                         missing if missing and isinstance(err, FileNotFoundError) else advice
                         ) from None
    with f:
        if size == 0:
            raise read_error(p, what, "the file is empty", advice)
        try:
            return torch.load(f, weights_only=True, map_location=map_location)
        except pickle.UnpicklingError as err:
            text = str(err)
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if found:
                problem = (f"it holds Python objects other than tensors and plain containers "
                           f"({found.group(1)}), which grafs does not load (a file not written "
                           f"by grafs)")
            else:
                inner = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
                problem = (f"it is not a torch file (corrupt: "
                           f"{(inner.group(1) if inner else _first_line(err))[:120]})")
        except Exception as err:  # noqa: BLE001 - zip, pickle and I/O errors of a bad file
            problem = (f"it is not a readable torch file (truncated or corrupt: "
                       f"{type(err).__name__}: {_first_line(err)})")
    raise read_error(p, what, problem, advice)


def _first_line(err: BaseException) -> str:
    text = (str(err).splitlines() or [""])[0]
    return (text.split(". ")[0] if len(text) > 120 else text)[:120] or type(err).__name__
