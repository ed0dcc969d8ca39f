"""A search's checkpoint file: written atomically after every epoch, read back on resume.

Only rank 0 of a data-parallel search reads or writes it (the other ranks get its contents
broadcast, see grafs.searching.distributed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from grafs.errors import GrafsError
from grafs.files import atomic_torch_save, read_error, torch_load, write_error
from grafs.searching.result import json_default
from grafs.searching.rng import RNG_KEYS

CHECKPOINT_NAME = "checkpoint.pt"


class Interrupted(Exception):
    """Test hook: stop a search after an epoch as if the process had been killed."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or the checkpoint inside it when it is a directory."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def resume_source(resume, checkpoint_dir):
    """What ``resume`` names: a checkpoint's path or folder, None, or ``True`` for
    ``checkpoint_dir``; a GrafsError for anything else."""
    if resume is True:
        if checkpoint_dir is None:
            raise GrafsError("resume=True resumes from checkpoint_dir, and none was given: pass "
                             "checkpoint_dir=..., or resume=<the checkpoint's path or folder>")
        return checkpoint_dir
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise GrafsError(f"resume must be the checkpoint's path or folder (or True with "
                         f"checkpoint_dir), got {resume!r}")
    return resume


#: the checkpoint's layout; a checkpoint of a later layout is refused with a clear error
CHECKPOINT_VERSION = 1
#: what resuming needs besides the searcher's own state
REQUIRED = ("epoch", "settings", "history", "model", "w_opt", "rng", "elapsed")
_ANEW = "start the search anew (without resume) or resume from another copy"


def read_checkpoint(path: Path, map_location) -> dict:
    """The checkpoint's contents, or a GrafsError that says which file is unusable and why."""
    ck = torch_load(path, "the search checkpoint", _ANEW, map_location,
                    missing=f"pass the --out directory (checkpoint_dir) of an earlier search "
                            f"(it holds {CHECKPOINT_NAME})")
    if not isinstance(ck, dict) or not {"epoch", "settings", "history"} <= set(ck):
        raise read_error(path, "the search checkpoint", "it is a torch file but not a grafs "
                         "search checkpoint (no epoch, settings and history)", _ANEW)
    version = ck.get("grafs_checkpoint_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise read_error(path, "the search checkpoint", f"it was written by a newer grafs "
                         f"(checkpoint format {version!r}; this grafs reads up to "
                         f"{CHECKPOINT_VERSION})", "upgrade grafs to resume it, or " + _ANEW)
    missing = [k for k in REQUIRED if k not in ck]
    wrong = [k for k, t in (("epoch", int), ("settings", str), ("history", str), ("model", dict),
                            ("w_opt", dict), ("rng", dict), ("elapsed", (int, float)))
             if k in ck and not isinstance(ck[k], t)]
    if missing or wrong:
        raise read_error(path, "the search checkpoint", "it is incomplete or of another grafs "
                         "version (" + ", ".join([f"no {k}" for k in missing]
                                                 + [f"{k} of the wrong type" for k in wrong]) + ")",
                         _ANEW)
    try:
        settings, history = json.loads(ck["settings"]), json.loads(ck["history"])
    except ValueError:
        raise read_error(path, "the search checkpoint", "its settings or history are not JSON "
                         "(corrupt)", _ANEW) from None
    problems = []
    if not isinstance(settings, dict) or not isinstance(history, dict):
        problems.append("its settings or history are not JSON objects")
    lost = [k for k in RNG_KEYS if k not in ck["rng"]]
    if lost:
        problems.append("its RNG state lacks " + ", ".join(lost))
    lacking = [k for k in ("a_opt", "cell") if k not in ck]
    if lacking:
        problems.append("it lacks the search's own state (" + ", ".join(lacking) + ")")
    epochs = settings.get("epochs") if isinstance(settings, dict) else None
    if isinstance(epochs, int) and not 0 <= ck["epoch"] < epochs:
        problems.append(f"its epoch ({ck['epoch']}) is not one of the search's {epochs}")
    if problems:
        raise read_error(path, "the search checkpoint", "it is damaged: " + "; ".join(problems),
                         _ANEW)
    return ck


def check_compatible(ck: dict, path: Path, settings: dict, world: int) -> None:
    """Raise unless the checkpoint was written by a search with these settings and ranks."""
    if int(ck.get("world_size", 1)) != world:
        raise GrafsError(f"cannot resume from {path}: it was written by a search on "
                         f"{ck.get('world_size', 1)} process(es), this one runs on {world}; "
                         f"resume with the same number of processes")
    saved, now = json.loads(ck["settings"]), json.loads(json.dumps(settings, default=json_default))
    if saved != now:
        diff = [f"{k}: {saved.get(k, '(not set)')!r} there, {now.get(k, '(not set)')!r} here"
                for k in sorted(set(saved) | set(now), key=str) if saved.get(k) != now.get(k)]
        raise GrafsError(f"cannot resume from {path}: it was written by a search with other settings "
                         f"({'; '.join(diff)}); resume with the same settings, or start without "
                         f"resume")


# implementation choices that compute the same update: not part of an optimizer's identity
_IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


def optimizer_identity(opt, sched=None) -> str:
    """The weight optimizer's class and constructor settings and the scheduler's class, as
    JSON: a resume loads the optimizer's state, which would silently replace another learning
    rate (or fail inside torch for another optimizer), so :func:`check_same_optimizer` refuses
    a resume whose optimizer differs."""
    defaults = {k: v for k, v in opt.defaults.items() if k not in _IMPLEMENTATION}
    return json.dumps({"optimizer": type(opt).__name__, "settings": defaults,
                       "groups": len(opt.param_groups),
                       "scheduler": type(sched).__name__ if sched is not None else None},
                      default=str, sort_keys=True)


def check_same_optimizer(ck: dict, path: Path, opt, sched=None) -> None:
    """Raise unless the checkpoint's weight optimizer and scheduler are ``opt``'s and
    ``sched``'s (checkpoints written before grafs recorded them are not checked)."""
    saved = ck.get("optimizer")
    if not isinstance(saved, str):
        return
    now = optimizer_identity(opt, sched)
    if saved != now:
        raise GrafsError(f"cannot resume from {path}: it was written with another weight "
                         f"optimizer or scheduler ({_describe(saved)}; this search has "
                         f"{_describe(now)}); the checkpoint's optimizer state would replace "
                         f"yours: resume with the same optimizer and scheduler, or start "
                         f"without resume")


def _describe(identity: str) -> str:
    d = json.loads(identity)
    args = ", ".join(f"{k}={v}" for k, v in d["settings"].items())
    sched = f", scheduler {d['scheduler']}" if d["scheduler"] else ", no scheduler"
    return f"{d['optimizer']}({args}){sched}"


def write_checkpoint(ck: dict, path: Path) -> None:
    """Write ``ck`` to ``path`` atomically; a failure (disk full, a read-only directory) is a
    GrafsError that says the previous checkpoint is kept, and leaves no temporary file."""
    kept = (f"the previous checkpoint is unchanged (resume from {path})" if path.exists() else
            "the search has no checkpoint yet")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, "the checkpoint directory", err, kept) from None
    atomic_torch_save({**ck, "grafs_checkpoint_version": CHECKPOINT_VERSION}, path,
                      "the search checkpoint", kept)
