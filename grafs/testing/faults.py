"""Fault injection on every file grafs reads or writes, and the rules a fault must not break.

A :class:`Target` is one kind of file (a search checkpoint, a saved result, an evaluation cache
entry, a study file, a generated source, a C library) with the grafs operations that read and
write it. A trial (:func:`run_trial`) installs the target's last good state in a fresh
directory, injects one fault and runs the operation:

read faults (:data:`READ_FAULTS`): the file missing, empty, truncated at a random point, random
bytes, a valid file of another kind, a grafs file of another version, no read permission;

write faults (:data:`WRITE_FAULTS`): the disk full while it is written, a read-only directory,
the process killed by SIGKILL in the middle of the write.

The rules (:func:`message_problems` and the checks of :func:`run_trial`):

* the operation either succeeds where that is right (a cache builds an unusable entry again; a
  study starts from an empty file) or raises a :class:`~grafs.errors.GrafsError` that names the
  file, says what is wrong with it and what to do, and never advises loading with
  ``weights_only=False``; no other exception escapes;
* after a failed write the last good file is untouched, byte for byte, and still usable (a
  resume from the last good checkpoint gives the uninterrupted search's formula); after a
  SIGKILL the file is the old one or the whole new one;
* no temporary file is left (after a SIGKILL: once the next write of that file has run).

How faults are made: where this process may mount file systems (root on Linux) the disk is a
real 150 kB tmpfs filled up to a random point, and a read-only directory a tmpfs remounted
read-only; elsewhere an OSError(ENOSPC) is injected after a random number of bytes and a
read-only directory is a ``chmod``. Permissions do not stop root, so as root "no read
permission" (and a read-only directory without mounts) is an OSError(EACCES/EROFS) injected
by patching ``open``, ``os.open``, ``io.open_code``, ``os.replace`` and ``ctypes.CDLL`` for
that path. A SIGKILL is sent by the writing process to itself after a random number of bytes
(or before one of its renames); a C build, which writes through the compiler, is killed with
its process group after a random delay. :attr:`Outcome.how` says which was used.

Each trial runs in a forked process where the platform has ``fork`` (a crash is a failed trial,
not a crashed campaign). No pytest here: ``tests/test_faults.py`` runs one trial per target and
fault, ``scripts/faults.py`` a long campaign.
"""
from __future__ import annotations

import builtins
import ctypes
import errno
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from grafs.errors import GrafsError, GrafsWarning

READ_FAULTS = ("missing", "empty", "truncated", "random_bytes", "foreign", "other_version",
               "unreadable")
WRITE_FAULTS = ("disk_full", "read_only", "sigkill")
FAULTS = READ_FAULTS + WRITE_FAULTS
#: the size of the tmpfs that plays a full disk
TMPFS_BYTES = 150 * 1024
#: words of a message that say what to do
ADVICE = re.compile(r"\b(start|delete|remove|free|pass|set|resume|re-?run|run|use|choose|make|"
                    r"give|check|upgrade|install|load|move|write|save)\b", re.I)
#: words of a message that say what is wrong
REASON = re.compile(r"empty|no such|\bnot\b|truncated|corrupt|full|read-only|permission|denied|"
                    r"newer|older|another|incomplete|wrong|\bno\b|space|failed", re.I)
#: what no message may advise: loading a file with its code (or allow-listing its classes)
UNSAFE = re.compile(r"weights_only\W*(=|set to|to)?\W*False|safe_globals", re.I)


# -- outcomes ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One trial: ``problems`` lists every rule it broke (empty: clean)."""
    target: str
    fault: str
    seed: int
    problems: list[str] = field(default_factory=list)
    error: str | None = None     #: the GrafsError the operation raised (None: it succeeded)
    how: str = ""                #: how the fault was made (tmpfs, injected ENOSPC, ...)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems


def message_problems(message: str, names: list[str]) -> list[str]:
    """What a user-facing error message lacks: the file's name (any of ``names``), what is
    wrong, what to do; or unsafe advice."""
    out = []
    if not any(n and n in message for n in names):
        out.append(f"the message does not name the file ({names[0]}): {message[:300]!r}")
    if not REASON.search(message):
        out.append(f"the message does not say what is wrong: {message[:300]!r}")
    if not ADVICE.search(message):
        out.append(f"the message does not say what to do: {message[:300]!r}")
    if UNSAFE.search(message):
        out.append(f"the message advises loading unsafely: {message[:300]!r}")
    return out


# -- injected faults ---------------------------------------------------------------------------
class Injector:
    """Patches Python's file primitives to fail like a broken disk for some paths.

    ``deny_read[path] = inode``: opening ``path`` for reading while it is that inode raises
    EACCES (a file written again is readable). ``deny_write[directory] = errno``: creating,
    writing, renaming into or removing anything under ``directory`` raises that errno.
    ``budget = (directory, bytes, action)``: writes to files under ``directory`` fail once
    ``bytes`` have been written in all, with ENOSPC (``action="enospc"``) or a SIGKILL of this
    process (``"kill"``). ``kill_at_replace = (directory, n)``: SIGKILL just before the n-th
    rename into ``directory``."""

    def __init__(self):
        self.deny_read: dict[str, int] = {}
        self.deny_write: dict[str, int] = {}
        self.budget: list | None = None
        self.kill_at_replace: list | None = None
        self._saved: list = []

    @staticmethod
    def _under(path: str, directory: str) -> bool:
        return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)

    def _write_errno(self, path: str) -> int | None:
        for d, no in self.deny_write.items():
            if self._under(path, d):
                return no
        return None

    def _check_read(self, path: str) -> None:
        ino = self.deny_read.get(path)
        if ino is not None:
            try:
                same = os.stat(path).st_ino == ino
            except OSError:
                same = False
            if same:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    def _check_write(self, path: str) -> None:
        no = self._write_errno(path)
        if no is not None:
            raise OSError(no, os.strerror(no), path)

    def __enter__(self) -> "Injector":
        inj = self
        o_open, o_os_open, o_open_code = builtins.open, os.open, io.open_code
        o_replace, o_rename, o_mkdir, o_unlink = os.replace, os.rename, os.mkdir, os.unlink
        o_cdll = ctypes.CDLL.__init__

        def open_(file, mode="r", *a, **k):
            if isinstance(file, int):
                return o_open(file, mode, *a, **k)
            path = os.path.abspath(os.fspath(file))
            writing = any(c in mode for c in "wax+")
            if writing:
                inj._check_write(path)
            if not writing or "+" in mode:
                inj._check_read(path)
            f = o_open(file, mode, *a, **k)
            b = inj.budget
            if writing and b is not None and inj._under(path, b[0]):
                return _Limited(f, inj)
            return f

        def os_open(path, flags, mode=0o777, *, dir_fd=None):
            p = os.path.abspath(os.fspath(path))
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
                inj._check_write(p)
            if not flags & os.O_WRONLY:
                inj._check_read(p)
            return o_os_open(path, flags, mode, dir_fd=dir_fd)

        def open_code(path):
            inj._check_read(os.path.abspath(os.fspath(path)))
            return o_open_code(path)

        def moved(orig):
            def move(src, dst, *a, **k):
                d = os.path.abspath(os.fspath(dst))
                inj._check_write(d)
                inj._check_write(os.path.abspath(os.fspath(src)))
                kr = inj.kill_at_replace
                if kr is not None and inj._under(d, kr[0]):
                    kr[1] -= 1
                    if kr[1] <= 0:
                        os.kill(os.getpid(), signal.SIGKILL)
                return orig(src, dst, *a, **k)
            return move

        def mkdir(path, mode=0o777, *, dir_fd=None):
            p = os.path.abspath(os.fspath(path))
            if inj._write_errno(p) is not None and os.path.exists(p):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), p)
            inj._check_write(p)
            return o_mkdir(path, mode, dir_fd=dir_fd)

        def unlink(path, *, dir_fd=None):
            inj._check_write(os.path.abspath(os.fspath(path)))
            return o_unlink(path, dir_fd=dir_fd)

        def cdll(self_, name, *a, **k):
            if isinstance(name, (str, os.PathLike)):
                inj._check_read(os.path.abspath(os.fspath(name)))
            return o_cdll(self_, name, *a, **k)

        self._saved = [(builtins, "open", o_open), (io, "open", io.open), (os, "open", o_os_open),
                       (io, "open_code", o_open_code), (os, "replace", o_replace),
                       (os, "rename", o_rename), (os, "mkdir", o_mkdir), (os, "unlink", o_unlink),
                       (os, "remove", os.remove), (ctypes.CDLL, "__init__", o_cdll)]
        builtins.open = io.open = open_
        os.open, io.open_code = os_open, open_code
        os.replace, os.rename = moved(o_replace), moved(o_rename)
        os.mkdir, os.unlink, os.remove = mkdir, unlink, unlink
        ctypes.CDLL.__init__ = cdll
        return self

    def __exit__(self, *exc) -> None:
        for obj, name, value in reversed(self._saved):
            setattr(obj, name, value)
        self._saved = []


class _Limited:
    """A file whose writes draw on the injector's byte budget."""

    def __init__(self, f, inj: Injector):
        self._f, self._inj = f, inj

    def write(self, data) -> int:
        b = self._inj.budget
        text = isinstance(data, str)
        n = len(data) if text else memoryview(data).nbytes
        if b is not None and n > b[1]:
            if b[1] > 0:
                self._f.write(data[: b[1]] if text else memoryview(data).cast("B")[: b[1]])
            b[1] = 0
            if b[2] == "kill":
                self._f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(self._f, "name", ""))
        if b is not None:
            b[1] -= n
        return self._f.write(data)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


# -- the machine's abilities -------------------------------------------------------------------
def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


_MOUNT_OK: bool | None = None


def can_mount() -> bool:
    """Whether this process can mount a tmpfs (root on Linux, outside a locked container)."""
    global _MOUNT_OK
    if _MOUNT_OK is None:
        _MOUNT_OK = False
        if sys.platform.startswith("linux") and is_root() and shutil.which("mount"):
            import tempfile
            d = tempfile.mkdtemp(prefix="grafs-faults-probe-")
            try:
                _MOUNT_OK = _mount_tmpfs(Path(d), 64 * 1024)
                if _MOUNT_OK:
                    _umount(Path(d))
            finally:
                os.rmdir(d)
    return _MOUNT_OK


def _mount_tmpfs(d: Path, size: int) -> bool:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True)
    return r.returncode == 0


def _umount(d: Path) -> None:
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _remount(d: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(d)], check=True, capture_output=True)


def mounts_under(d: Path) -> list[Path]:
    """Mount points at or below ``d`` (deepest first)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    base = str(d.resolve())
    found = [Path(ln.split()[1].replace("\\040", " ")) for ln in lines if len(ln.split()) > 1]
    return sorted((m for m in found if str(m) == base or str(m).startswith(base + os.sep)),
                  key=lambda m: -len(str(m)))


# -- targets -----------------------------------------------------------------------------------
class Target:
    """One kind of file grafs reads or writes.

    ``file``: its path inside a trial's directory; ``prepare(root)`` writes the last good
    state into ``root`` once (copied into each trial's directory); ``read(work)`` is the grafs
    operation that reads the file, ``write(work)`` the one that writes it anew; ``usable(work)``
    raises AssertionError unless the file there is the last good one or a whole new one, and
    usable; ``check_read(work, value)`` checks what a repairing read returned.
    ``faults``: those that apply; ``repairs``: the read faults after which the read must succeed (a cache builds the entry
    again); ``warns_on_write``: a failed write is a GrafsWarning, not an error (a cache: the
    work goes on without it); ``kill_by``: "bytes" (the writer kills itself mid-write) or
    "timer" (a build in a subprocess, killed with its group after a random delay)."""

    name = ""
    file = ""
    faults: tuple = FAULTS
    repairs: frozenset = frozenset()
    warns_on_write = False
    kill_by = "bytes"
    env: dict[str, str] = {}

    def available(self) -> str | None:
        """None, or why this target cannot be tried here."""
        return None

    def prepare(self, root: Path) -> None:
        raise NotImplementedError

    def read(self, work: Path) -> Any:
        raise NotImplementedError

    def check_read(self, work: Path, value: Any) -> None:
        pass

    def write(self, work: Path) -> Any:
        raise NotImplementedError

    def usable(self, work: Path) -> None:
        raise NotImplementedError

    def foreign(self, rng: random.Random) -> bytes:
        raise NotImplementedError

    def other_version(self, rng: random.Random) -> bytes:
        raise NotImplementedError

    def names(self, work: Path) -> list[str]:
        """What a message about the file may name it by: the file, or any path in the trial's
        directory (a write names the file it failed on: a new cache entry, the directory)."""
        p = work / self.file
        return [str(p), p.name, str(work)]


def _torch_bytes(obj) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tiny_search(restarts: bool = False, **kw):
    """A search of a few hundred milliseconds (warnings about its short budget are silenced);
    ``restarts``: a race of two restarts compared after epoch 2 of 3."""
    import torch
    from torch import nn
    from grafs.runtime.space import SearchSpace
    from grafs.searching.loop import search
    from grafs.searching.restarts import search_restarts
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    space = SearchSpace(template="B(U(x), U(x))", unary=["identity", "relu", "tanh", "square"],
                        binary=["add", "mul"])
    if restarts:
        kw.update(restarts=2, pick_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrafsWarning)
        return (search_restarts if restarts else search)(
            model, (x, y), space=space, epochs=3, warmstart_epochs=1, seed=0, batch_size=16,
            progress=False, cell_mode="lean", max_steps_per_epoch=2, arch_lr=3e-2, **kw)


class CheckpointTarget(Target):
    """The search checkpoint: resumed by ``search(resume=...)``, written after every epoch."""
    name = "search checkpoint"
    file = "ck/checkpoint.pt"

    def prepare(self, root: Path) -> None:
        from grafs.searching.checkpoint import Interrupted
        try:
            _tiny_search(checkpoint_dir=root / "ck", _stop_after_epoch=0)
        except Interrupted:
            pass
        self.reference = _tiny_search().formula
        self.good = (root / self.file).read_bytes()

    def read(self, work: Path):
        return _tiny_search(resume=work / "ck", checkpoint_dir=work / "ck")

    def write(self, work: Path):
        from grafs.searching.checkpoint import Interrupted
        try:   # resume from epoch 0, write epoch 1's checkpoint, stop
            _tiny_search(resume=work / "ck", checkpoint_dir=work / "ck", _stop_after_epoch=1)
        except Interrupted:
            pass

    def usable(self, work: Path) -> None:
        r = _tiny_search(resume=work / "ck", checkpoint_dir=work / "ck")
        assert r.formula == self.reference, \
            f"the resumed search found {r.formula!r}, the uninterrupted one {self.reference!r}"

    def _good(self) -> dict:
        import torch
        return torch.load(io.BytesIO(self.good), weights_only=True)

    def foreign(self, rng):
        import torch
        choices = [
            lambda: _torch_bytes({"weight": torch.randn(3, 3)}),              # a state dict
            lambda: _torch_bytes([torch.zeros(2), 1, "x"]),                     # another torch file
            lambda: json.dumps({"formula": "relu(x)", "history": {}}).encode(),  # a result.json
            lambda: pickle.dumps({"epoch": 1}),                                  # a plain pickle
            lambda: _torch_bytes({"epoch": 1, "obj": _Foreign()}),              # code in a pickle
        ]
        return rng.choice(choices)()

    def other_version(self, rng):
        ck = self._good()
        kind = rng.randrange(4)
        if kind == 0:
            ck["grafs_checkpoint_version"] = 2          # a later grafs
        elif kind == 1:
            ck.pop(rng.choice(["model", "w_opt", "rng", "elapsed"]))   # an older layout
        elif kind == 2:
            ck["settings"] = json.loads(ck["settings"])                # settings not as JSON text
        else:
            ck["history"] = "{not json"
        return _torch_bytes(ck)


class RestartCheckpointTarget(CheckpointTarget):
    """A restart's checkpoint in a race of restarts, read when the race is resumed
    (grafs.searching.restarts); written as any checkpoint (see the search checkpoint's row)."""
    name = "restart checkpoint (race)"
    file = "rs/restart-1/checkpoint.pt"
    faults = READ_FAULTS
    repairs = frozenset({"missing"})     # restart 1 had not started: it runs now

    def prepare(self, root: Path) -> None:
        self.reference = _tiny_search(restarts=True, checkpoint_dir=root / "rs").formula
        self.good = (root / self.file).read_bytes()

    def read(self, work: Path):
        return _tiny_search(restarts=True, resume=work / "rs")

    def check_read(self, work: Path, value) -> None:
        assert value.formula == self.reference, \
            f"the resumed race found {value.formula!r}, the uninterrupted one {self.reference!r}"


class _Foreign:
    """A class a pickle may name: loading it would run code."""


class ResultTarget(Target):
    """``SearchResult.save`` / ``SearchResult.load``: result.json and the cell file it names."""
    name = "search result (result.json)"
    file = "res/result.json"

    def _results(self):
        import torch
        from grafs.searching.result import SearchResult
        old = SearchResult("tanh(x)*relu(x)", {"epochs": [0, 1], "val_loss": [0.7, 0.6]},
                           {"seed": 0}, 1.5, {"alpha_0": torch.arange(3.0), "gamma": torch.ones(2)})
        new = SearchResult("relu(x) + 0.5*tanh(x)", {"epochs": [0, 1, 2], "val_loss": [0.7, 0.6, 0.5]},
                           {"seed": 1}, 2.5, {"alpha_0": torch.arange(4.0), "gamma": torch.zeros(2)})
        return old, new

    def prepare(self, root: Path) -> None:
        old, _ = self._results()
        old.save(root / "res")
        self.good = (root / self.file).read_bytes()

    def read(self, work: Path):
        from grafs.searching.result import SearchResult
        return SearchResult.load(work / "res")

    def write(self, work: Path):
        self._results()[1].save(work / "res")

    def usable(self, work: Path) -> None:
        import torch
        from grafs.searching.result import SearchResult
        got = SearchResult.load(work / "res")
        for want in self._results():
            if got.formula == want.formula:
                assert got.history == want.history and set(got.cell_state) == set(want.cell_state)
                for k, v in want.cell_state.items():
                    assert torch.equal(got.cell_state[k], v), f"{k} of the cell state differs"
                return
        raise AssertionError(f"the result holds {got.formula!r}, neither the old nor the new one")

    def foreign(self, rng):
        import torch
        return rng.choice([
            lambda: json.dumps([{"kind": "search", "seed": 0, "formula": "relu(x)"}]).encode(),
            lambda: json.dumps({"task": "teacher", "metric": "loss", "rows": []}).encode(),
            lambda: _torch_bytes({"alpha_0": torch.zeros(3)}),
            lambda: b"formula: relu(x)\n",
        ])()

    def other_version(self, rng):
        meta = json.loads(self.good)
        kind = rng.randrange(4)
        if kind == 0:
            meta["grafs_result_version"] = 2
        elif kind == 1:
            meta.pop("formula")
        elif kind == 2:
            meta["history"] = [1, 2]
        else:
            meta["formula"] = "relu(x"               # a formula this grafs cannot parse
        return json.dumps(meta).encode()


class ResultCellTarget(ResultTarget):
    """The cell state file a saved result names."""
    name = "search result (cell file)"

    def prepare(self, root: Path) -> None:
        super().prepare(root)
        self.file = "res/" + json.loads(self.good)["cell"]
        self.good = (root / self.file).read_bytes()

    def foreign(self, rng):
        return rng.choice([
            lambda: _torch_bytes({"epoch": 1, "settings": "{}"}),
            lambda: _torch_bytes([1, 2, 3]),
            lambda: json.dumps({"formula": "relu(x)"}).encode(),
        ])()

    def other_version(self, rng):
        return _torch_bytes({"alpha_0": [0.0, 1.0, 2.0], "gamma": [1.0, 1.0]})   # lists, not tensors


class _StubTask:
    """A task whose "training" is free: its score is a function of the seed."""
    name = "faults-stub"
    metric_name = "score"

    def summary(self):
        return {"name": self.name}

    def make_model(self, factory, seed=0):
        import torch
        return torch.nn.Sequential(torch.nn.Linear(2, 2), factory())

    def fit(self, model, cfg, seed=0, device=None, max_steps=None, data=None):
        return {"train_loss": [1.0 / (seed + 1)]}

    def evaluate(self, model, split, device=None):
        return {"score": self.expected(getattr(self, "_seed", 0))}

    @staticmethod
    def expected(seed: int) -> float:
        return seed + 0.5


class _StubConfig:
    def to_dict(self):
        return {"epochs": 1}


class EvalCacheTarget(Target):
    """An evaluation's cached run (``<out_dir>/runs/<key>.json``, grafs.protocol.runs)."""
    name = "evaluation cache entry"
    repairs = frozenset(READ_FAULTS)
    warns_on_write = True

    def _run(self, work: Path, seed: int):
        import torch
        from grafs.protocol.runs import RunSpec, run_all
        task = _StubTask()
        task._seed = seed
        spec = RunSpec(0, "F1", "relu(x)", seed)
        return run_all(task, [spec], _StubConfig(), "eager", torch.device("cpu"),
                       cache_dir=work / "eval")[0]

    def _key_file(self, seed: int) -> str:
        import torch
        from grafs.protocol.runs import RunSpec, run_key
        key = run_key(_StubTask(), RunSpec(0, "F1", "relu(x)", seed), _StubConfig(), "eager",
                      torch.device("cpu"), None)
        return f"eval/runs/{key}.json"

    def prepare(self, root: Path) -> None:
        self._run(root, 3)
        self.file = self._key_file(3)
        self.good = (root / self.file).read_bytes()
        other = root.with_name(root.name + "-other")
        self._run(other, 5)
        self.other = (other / self._key_file(5)).read_bytes()

    def read(self, work: Path):
        return self._run(work, 3)

    def check_read(self, work: Path, r) -> None:
        assert r.error is None and r.score == _StubTask.expected(3), \
            f"the run gave {r.score} ({r.error}), not {_StubTask.expected(3)}"
        d = json.loads((work / self.file).read_text())
        assert d["score"] == r.score and d["seed"] == 3, "the cache entry was not written again"

    def write(self, work: Path):
        r = self._run(work, 4)          # a new entry beside the old one
        assert r.error is None and r.score == _StubTask.expected(4), r

    def usable(self, work: Path) -> None:
        r = self._run(work, 3)
        assert r.cached and r.score == _StubTask.expected(3), f"the cached run is lost: {r}"

    def foreign(self, rng):
        return rng.choice([
            lambda: self.other,                                    # another run's entry
            lambda: json.dumps([1, 2, 3]).encode(),
            lambda: _torch_bytes({"score": 1.0}),
            lambda: json.dumps({"formula": "relu(x)", "history": {}}).encode(),
        ])()

    def other_version(self, rng):
        d = json.loads(self.good)
        kind = rng.randrange(3)
        if kind == 0:
            d["score"] = "n/a"
        elif kind == 1:
            d.pop("train_loss")
        else:
            d = {"version": 2, "result": d}
        return json.dumps(d).encode()


def _study_module():
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "scripts" / "study.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("grafs_faults_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class StudyTarget(Target):
    """A study file of ``scripts/study.py`` (its rows, appended as searches finish)."""
    name = "study JSON"
    file = "study.json"
    repairs = frozenset({"missing"})      # no file yet: a new study
    ROWS = [{"kind": "search", "task": "teacher", "teacher": "tanh(x)", "seed": 0,
             "variant": "grafs", "overrides": {}, "formula": "tanh(x)", "seconds": 1.0}]
    NEW = {"kind": "search", "task": "teacher", "teacher": "tanh(x)", "seed": 1,
           "variant": "grafs", "overrides": {}, "formula": "relu(x)", "seconds": 2.0}

    def available(self):
        return None if _study_module() is not None else "scripts/study.py is not beside grafs"

    def prepare(self, root: Path) -> None:
        self.study = _study_module()
        self.study._save(root / self.file, self.ROWS)
        self.good = (root / self.file).read_bytes()

    def read(self, work: Path):
        return self.study._load(work / self.file)

    def check_read(self, work: Path, value) -> None:
        assert value == [], f"a missing study file should read as no rows, got {value!r}"

    def write(self, work: Path):
        self.study._save(work / self.file, self.ROWS + [self.NEW])

    def usable(self, work: Path) -> None:
        rows = self.study._load(work / self.file)
        assert rows in (self.ROWS, self.ROWS + [self.NEW]), f"the study holds {rows!r}"

    def foreign(self, rng):
        return rng.choice([
            lambda: json.dumps({"formula": "relu(x)", "history": {}}).encode(),
            lambda: _torch_bytes({"epoch": 0}),
            lambda: json.dumps({"task": "teacher", "rows": []}).encode(),
        ])()

    def other_version(self, rng):
        kind = rng.randrange(3)
        if kind == 0:
            rows = [{k: v for k, v in self.ROWS[0].items() if k != "seed"}]
        elif kind == 1:
            rows = ["search tanh(x) seed 0"]
        else:
            rows = [{**self.ROWS[0], "kind": "restart"}]
        return json.dumps(rows).encode()


class GeneratedSourceTarget(Target):
    """A generated Python module in the cache (grafs.compiler.codegen.load_source)."""
    name = "generated-source cache"
    repairs = frozenset(READ_FAULTS)
    SOURCE = "# generated by grafs' fault tests\n\n\ndef grafs_fn(x):\n    return x * 2 + 1\n"
    NEW = "# generated by grafs' fault tests\n\n\ndef grafs_fn(x):\n    return x * 3 + 1\n"
    PREFIX = "grafs_faults_gen"

    def _load(self, work: Path, source: str):
        from grafs.compiler import codegen
        os.environ["GRAFS_CACHE_DIR"] = str(work / "cache")
        for name in [m for m in sys.modules if m.startswith(self.PREFIX)]:
            del sys.modules[name]
        return codegen.load_source(source, self.PREFIX)

    def prepare(self, root: Path) -> None:
        import hashlib
        old = os.environ.get("GRAFS_CACHE_DIR")
        try:
            self._load(root, self.SOURCE)
        finally:
            _set_env("GRAFS_CACHE_DIR", old)
        digest = hashlib.sha256(self.SOURCE.encode()).hexdigest()[:20]
        self.file = f"cache/generated/{self.PREFIX}_{digest}.py"
        self.good = (root / self.file).read_bytes()

    def read(self, work: Path):
        return self._load(work, self.SOURCE)

    def check_read(self, work: Path, mod) -> None:
        assert mod.grafs_fn(3) == 7, "the module computes something else"
        assert (work / self.file).read_bytes() == self.good, "the cache file was not written again"

    def write(self, work: Path):
        assert self._load(work, self.NEW).grafs_fn(3) == 10

    def usable(self, work: Path) -> None:
        assert self._load(work, self.SOURCE).grafs_fn(3) == 7
        assert (work / self.file).read_bytes() == self.good

    def foreign(self, rng):
        return rng.choice([lambda: b"\x7fELF\x02\x01\x01" + bytes(200),
                           lambda: json.dumps({"formula": "relu(x)"}).encode(),
                           lambda: "int grafs_probe(void) { return 1; }\n".encode()])()

    def other_version(self, rng):
        return self.SOURCE.replace("x * 2 + 1", "x * 2").encode()     # another generator's code


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class CLibraryTarget(Target):
    """A C library of the relaxed cell in the cache (grafs.compiler.cell.c_build)."""
    name = "C library cache"
    repairs = frozenset(READ_FAULTS)
    kill_by = "timer"

    def available(self):
        from grafs.compiler.cell import c_build
        return c_build.unavailable_reason()

    def _source(self, n: int, isa: str) -> str:
        from grafs.compiler.cell import c_build
        return ("#include <stddef.h>\n" + c_build._probe_source(isa)
                + f"int grafs_faults_{n}(void) {{ return {n}; }}\n")

    def _build(self, work: Path, n: int):
        from grafs.compiler.cell import c_build
        os.environ["GRAFS_CACHE_DIR"] = str(work / "cache")
        c_build._LIBS.clear()
        isa = c_build.native_isa() or "sse4"       # one reading for the source and its flags
        lib = c_build.build_library(self._source(n, isa), isa)
        out = (ctypes.c_float * 1)()
        lib.grafs_probe(out)
        assert abs(out[0] - 2.7182817) < 1e-5 and getattr(lib, f"grafs_faults_{n}")() == n
        return lib

    def prepare(self, root: Path) -> None:
        from grafs.compiler.cell import c_build
        old = os.environ.get("GRAFS_CACHE_DIR")
        try:
            before = set((root / "cache" / "c").glob("*.so"))
            self._build(root, 1)
            (lib,) = set((root / "cache" / "c").glob("*.so")) - before
            self.file = str(lib.relative_to(root))
            other = root.with_name(root.name + "-other")
            self._build(other, 2)
            self.other = next((other / "cache" / "c").glob("*.so")).read_bytes()
            # what grafs built before its libraries had a marker symbol: the same source
            old_lib = other / "old.so"
            isa = c_build.native_isa() or "sse4"
            subprocess.run([c_build._compiler(), *c_build._flags(isa), "-x", "c", "-",
                            "-o", str(old_lib), "-lmvec", "-lm"], input=self._source(1, isa),
                           text=True, check=True, capture_output=True)
            self.old = old_lib.read_bytes()
        finally:
            _set_env("GRAFS_CACHE_DIR", old)
        self.good = (root / self.file).read_bytes()

    def read(self, work: Path):
        return self._build(work, 1)

    def check_read(self, work: Path, value) -> None:
        from grafs.compiler.cell import c_build
        assert c_build._complete_elf(work / self.file), "the cached library was not built again"

    def write(self, work: Path):
        self._build(work, 3)

    def usable(self, work: Path) -> None:
        self._build(work, 1)
        assert (work / self.file).read_bytes() == self.good

    def foreign(self, rng):
        return rng.choice([lambda: GeneratedSourceTarget.SOURCE.encode(),
                           lambda: _torch_bytes({"x": 1}),
                           lambda: self.other])()      # another library (another build's)

    def other_version(self, rng):
        return self.old         # the library an older grafs built from the same source


def all_targets() -> list[Target]:
    return [CheckpointTarget(), RestartCheckpointTarget(), ResultTarget(), ResultCellTarget(), EvalCacheTarget(),
            StudyTarget(), GeneratedSourceTarget(), CLibraryTarget()]


# -- trials ------------------------------------------------------------------------------------
def prepare(targets: list[Target], root: Path) -> list[Target]:
    """Build every available target's last good state under ``root``; returns those ready."""
    ready = []
    for t in targets:
        if t.available() is not None:
            continue
        d = root / re.sub(r"\W+", "-", t.name)
        d.mkdir(parents=True, exist_ok=True)
        t.prepare(d)
        t.template = d
        ready.append(t)
    return ready


def _debris(work: Path, keep: set[str]) -> list[str]:
    out = []
    for p in work.rglob("*"):
        rel = str(p.relative_to(work))
        if rel in keep or "__pycache__" in p.parts:
            continue
        name = p.name.lower()
        if ".tmp" in name or name.startswith("tmp"):
            out.append(rel)
    return sorted(out)


def _install(t: Target, work: Path) -> None:
    shutil.copytree(t.template, work, dirs_exist_ok=True)


def _apply_read_fault(t: Target, fault: str, f: Path, rng: random.Random) -> str:
    good = t.good
    if fault == "missing":
        f.unlink()
    elif fault == "empty":
        f.write_bytes(b"")
    elif fault == "truncated":
        cut = rng.randrange(1, len(good))
        f.write_bytes(good[:cut])
        return f"cut at byte {cut} of {len(good)}"
    elif fault == "random_bytes":
        n = rng.randrange(1, 2 * len(good) + 2)
        f.write_bytes(bytes(rng.getrandbits(8) for _ in range(n)))
        return f"{n} random bytes"
    elif fault == "foreign":
        f.write_bytes(t.foreign(rng))
    elif fault == "other_version":
        f.write_bytes(t.other_version(rng))
    return ""


def _run_op(fn: Callable[[], Any], inj: Injector | None = None
            ) -> tuple[Any, BaseException | None, list]:
    """``fn()`` (under the injector ``inj``, if any): its value or exception, and its warnings."""
    import contextlib
    with inj if inj is not None else contextlib.nullcontext(), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None, caught
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - judged by the rules
            return None, err, caught


def _judge_error(err: BaseException | None, names: list[str], problems: list[str]) -> str | None:
    if err is None:
        return None
    if isinstance(err, GrafsError):
        problems += message_problems(str(err), names)
        return str(err)
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
    problems.append(f"a foreign exception escaped: {type(err).__name__}: {str(err)[:300]} | "
                    f"{tb.strip()[-400:]}")
    return None


def _grafs_warnings(caught, names: list[str]) -> list[str]:
    msgs = [str(w.message) for w in caught if issubclass(w.category, GrafsWarning)]
    return [m for m in msgs if any(n and n in m for n in names)]


def _read_trial(t: Target, fault: str, work: Path, rng: random.Random, out: Outcome) -> None:
    f = work / t.file
    out.how = _apply_read_fault(t, fault, f, rng)
    inj = None
    if fault == "unreadable":
        if is_root():
            inj = Injector()
            inj.deny_read[str(f.resolve())] = f.stat().st_ino
            out.how = "injected EACCES on open (root reads any file)"
        else:
            f.chmod(0)
            out.how = "chmod 000"
    try:
        value, err, caught = _run_op(lambda: t.read(work), inj)
    finally:
        if fault == "unreadable" and not is_root() and f.exists():
            f.chmod(0o644)
    names = t.names(work)
    if fault in t.repairs:
        if err is not None:
            out.problems.append(f"the {fault} entry should be built again, got "
                                f"{type(err).__name__}: {str(err)[:300]}")
        else:
            try:
                t.check_read(work, value)
            except AssertionError as e:
                out.problems.append(f"after the repair: {e}")
    else:
        if err is None:
            out.problems.append(f"reading a {fault} file succeeded (expected a GrafsError)")
        out.error = _judge_error(err, names, out.problems)
    for m in [str(w.message) for w in caught]:
        if UNSAFE.search(m):
            out.problems.append(f"a warning advises loading unsafely: {m[:200]!r}")
    out.problems += [f"temporary file left: {d}" for d in _debris(work, set())]


def _fill(work: Path, leave: int) -> Path:
    """Fill the file system of ``work`` up to ``leave`` free bytes."""
    filler = work / "filler.bin"
    st = os.statvfs(work)
    free = st.f_bavail * st.f_frsize
    n = max(0, free - leave)
    with builtins.open(filler, "wb") as fh:
        try:
            while n > 0:
                k = min(n, 1 << 16)
                fh.write(bytes(k))
                n -= k
            fh.flush()
        except OSError:
            pass
    return filler


def _write_trial(t: Target, fault: str, work: Path, rng: random.Random, out: Outcome) -> None:
    f = work / t.file
    names = t.names(work)
    mounted = False
    inj = None
    restore: list[Callable[[], None]] = []
    if fault == "sigkill":
        _sigkill(t, work, rng, out)
        return
    if fault == "disk_full":
        leave = rng.randrange(0, max(1, int(0.9 * len(t.good))))
        if can_mount():
            size = max(TMPFS_BYTES, 4 * sum(p.stat().st_size for p in t.template.rglob("*")
                                            if p.is_file()))
            shutil.rmtree(work)
            work.mkdir()
            mounted = _mount_tmpfs(work, size)
        if mounted:
            _install(t, work)
            filler = _fill(work, leave)
            restore.append(lambda: filler.unlink(missing_ok=True))
            out.how = f"tmpfs of {size // 1024} kB, {leave} bytes left free"
        else:
            inj = Injector()
            inj.budget = [str(work.resolve()), leave, "enospc"]
            out.how = f"injected ENOSPC after {leave} bytes"
    elif fault == "read_only":
        if can_mount():
            shutil.rmtree(work)
            work.mkdir()
            mounted = _mount_tmpfs(work, max(TMPFS_BYTES, 4 * len(t.good)))
        if mounted:
            _install(t, work)
            _remount(work, "ro")
            restore.append(lambda: _remount(work, "rw"))
            out.how = "tmpfs remounted read-only"
        elif not is_root():
            dirs = [work, *[p for p in work.rglob("*") if p.is_dir()]]
            for d in dirs:
                d.chmod(0o555)
            restore.append(lambda: [d.chmod(0o755) for d in dirs])
            out.how = "chmod 555 on every directory"
        else:
            inj = Injector()
            inj.deny_write[str(work.resolve())] = errno.EROFS
            out.how = "injected EROFS (root writes anywhere; no mount here)"
    try:
        _, err, caught = _run_op(lambda: t.write(work), inj)
    finally:
        for fn in restore:
            fn()
    if t.warns_on_write and err is None:
        for m in _grafs_warnings(caught, names):
            out.problems += message_problems(m, names)
    out.error = _judge_error(err, names, out.problems)
    if err is not None and f.read_bytes() != t.good:
        out.problems.append("the last good file was changed by the failed write")
    out.problems += [f"temporary file left: {d}" for d in _debris(work, set())]
    try:
        t.usable(work)
    except Exception as e:  # noqa: BLE001 - any failure here breaks the rule
        out.problems.append(f"the last good state is not usable: {type(e).__name__}: {str(e)[:300]}")
    if mounted:
        _umount(work)


def _sigkill(t: Target, work: Path, rng: random.Random, out: Outcome) -> None:
    """A child process writes the file and is killed in the middle; then the file must be
    the old or the whole new one, usable, and the next write must leave no temporary file."""
    delay = nth = budget = 0
    if t.kill_by == "timer":
        mode, delay = "timer", rng.uniform(0.0, 0.15)
        out.how = f"SIGKILL to the process group after {delay * 1000:.0f} ms"
    elif rng.random() < 0.25:
        mode, nth = "rename", rng.randint(1, 2)
        out.how = f"SIGKILL before rename #{nth}"
    else:
        mode, budget = "bytes", rng.randrange(0, len(t.good) + len(t.good) // 8 + 1)
        out.how = f"SIGKILL after {budget} bytes written"
    pid = os.fork()
    if pid == 0:     # the writer
        try:
            os.setpgid(0, 0)
            if mode != "timer":
                inj = Injector()
                if mode == "rename":
                    inj.kill_at_replace = [str(work.resolve()), nth]
                else:
                    inj.budget = [str(work.resolve()), budget, "kill"]
                with inj, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t.write(work)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t.write(work)
        except BaseException:  # noqa: BLE001 - the writer reports through its exit status
            os._exit(3)
        os._exit(0)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    if mode == "timer":
        time.sleep(delay)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        out.how += " (killed)"
    elif os.WEXITSTATUS(status) == 0:
        out.how += " (the write finished first)"
    else:
        out.problems.append(f"the writer failed before it was killed (exit {os.WEXITSTATUS(status)})")
    try:
        t.usable(work)
    except Exception as e:  # noqa: BLE001
        out.problems.append(f"after the SIGKILL the file is not usable: {type(e).__name__}: "
                            f"{str(e)[:300]}")
    _, err, _ = _run_op(lambda: t.write(work))        # the next write cleans up
    if err is not None:
        out.problems.append(f"the next write failed: {type(err).__name__}: {str(err)[:300]}")
    out.problems += [f"temporary file left after the next write: {d}"
                     for d in _debris(work, set())]


def _trial_body(t: Target, fault: str, seed: int, work: Path) -> Outcome:
    out = Outcome(t.name, fault, seed)
    rng = random.Random(f"{t.name}/{fault}/{seed}")
    t0 = time.perf_counter()
    os.environ["GRAFS_CACHE_DIR"] = str(work / "cache")
    work.mkdir(parents=True, exist_ok=True)
    _install(t, work)
    try:
        if fault in READ_FAULTS:
            _read_trial(t, fault, work, rng, out)
        else:
            _write_trial(t, fault, work, rng, out)
    except Exception as e:  # noqa: BLE001 - a broken trial is a failed one, with its story
        out.problems.append(f"the trial broke: {type(e).__name__}: {e} | "
                            + traceback.format_exc()[-500:])
    out.seconds = time.perf_counter() - t0
    return out


def run_trial(t: Target, fault: str, seed: int, base: Path, isolate: bool = True,
              timeout: float = 300.0) -> Outcome:
    """One trial of ``fault`` on the prepared target ``t`` in a new directory under ``base``;
    ``isolate``: in a forked process (where there is ``fork``), so that a crash or a hang is
    a failed trial."""
    work = Path(base) / re.sub(r"[^\w.-]+", "-", f"{t.name}-{fault}-{seed}-{time.monotonic_ns()}")
    if fault not in t.faults:
        raise GrafsError(f"fault {fault!r} does not apply to the {t.name}; choose from "
                         f"{', '.join(t.faults)}")
    if not isolate or not hasattr(os, "fork"):
        old = os.environ.get("GRAFS_CACHE_DIR")
        try:
            return _trial_body(t, fault, seed, work)
        finally:
            _set_env("GRAFS_CACHE_DIR", old)
            _cleanup(work)
    import select
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            _single_threaded()
            out = _trial_body(t, fault, seed, work)
            with os.fdopen(w, "w") as fh:
                json.dump(asdict(out), fh)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    t0 = time.monotonic()
    data, status = b"", None
    try:
        while True:
            ready, _, _ = select.select([r], [], [], 0.1)
            if ready:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    _, status = os.waitpid(pid, 0)
                    break
                data += chunk
            elif time.monotonic() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
    finally:
        os.close(r)
        _cleanup(work)
    if data:
        return Outcome(**json.loads(data))
    why = ("timed out" if status is None else
           f"died with signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else
           f"exited with {os.WEXITSTATUS(status)}")
    return Outcome(t.name, fault, seed, [f"the trial process {why}"])


def _single_threaded() -> None:
    """One intra-op thread in a forked process (a thread pool does not survive a fork)."""
    import torch
    torch.set_num_threads(1)


def _cleanup(work: Path) -> None:
    for m in mounts_under(work):
        _umount(m)
    for p in [work, *work.rglob("*")] if work.exists() else []:
        try:
            if p.is_dir():
                p.chmod(0o755)
        except OSError:
            pass
    shutil.rmtree(work, ignore_errors=True)


# -- tables ------------------------------------------------------------------------------------
def tally(outcomes: list[Outcome]) -> dict[tuple[str, str], list[int]]:
    """(target, fault) -> [tried, clean, failed]."""
    out: dict[tuple[str, str], list[int]] = {}
    for o in outcomes:
        c = out.setdefault((o.target, o.fault), [0, 0, 0])
        c[0] += 1
        c[1 if o.clean else 2] += 1
    return out


def table(outcomes: list[Outcome], markdown: bool = False) -> str:
    """Files × faults, each cell tried/clean/failed."""
    counts = tally(outcomes)
    targets = list(dict.fromkeys(o.target for o in outcomes))
    faults = [f for f in FAULTS if any(k[1] == f for k in counts)]
    cell = lambda k: "/".join(map(str, counts[k])) if k in counts else "-"   # noqa: E731
    if markdown:
        lines = ["| file | " + " | ".join(faults) + " |", "|---" * (len(faults) + 1) + "|"]
        lines += [f"| {t} | " + " | ".join(cell((t, f)) for f in faults) + " |" for t in targets]
        return "\n".join(lines)
    w = max(len(t) for t in targets) + 2
    cw = max(max(len(f) for f in faults), 8) + 2
    lines = ["file".ljust(w) + "".join(f.rjust(cw) for f in faults)]
    lines += [t.ljust(w) + "".join(cell((t, f)).rjust(cw) for f in faults) for t in targets]
    return "\n".join(lines)
