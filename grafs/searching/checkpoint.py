"""A search's checkpoint file: written atomically after every epoch, read back on resume.

Only rank 0 of a data-parallel search reads or writes it (the other ranks get its contents
broadcast, see grafs.searching.distributed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from grafs.errors import GrafsError
from grafs.searching.result import atomic_torch_save, json_default

CHECKPOINT_NAME = "checkpoint.pt"


class Interrupted(Exception):
    """Test hook: stop a search after an epoch as if the process had been killed."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or the checkpoint inside it when it is a directory."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def read_checkpoint(path: Path, map_location) -> dict:
    """The checkpoint's contents, or a GrafsError that says which file is unusable and why."""
    try:
        ck = torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise GrafsError(f"cannot resume from {path}: no such file; pass the --out directory "
                         f"of an earlier search (it holds {CHECKPOINT_NAME})") from None
    except Exception as err:  # noqa: BLE001 - truncated, random bytes, foreign pickle, ...
        # (torch's message would advise weights_only=False, i.e. running the file's code)
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise GrafsError(f"cannot resume from {path}: it is not a readable grafs checkpoint "
                         f"({type(err).__name__}: {reason[:200]}); start the search anew or "
                         f"resume from another copy") from None
    if not isinstance(ck, dict) or not {"epoch", "settings", "history"} <= set(ck):
        raise GrafsError(f"cannot resume from {path}: it is a torch file but not a grafs search "
                         f"checkpoint (no epoch, settings and history)")
    return ck


def check_compatible(ck: dict, path: Path, settings: dict, world: int) -> None:
    """Raise unless the checkpoint was written by a search with these settings and ranks."""
    if int(ck.get("world_size", 1)) != world:
        raise GrafsError(f"cannot resume from {path}: it was written by a search on "
                         f"{ck.get('world_size', 1)} process(es), this one runs on {world}; "
                         f"resume with the same number of processes")
    if json.loads(ck["settings"]) != json.loads(json.dumps(settings, default=json_default)):
        raise GrafsError(f"cannot resume from {path}: it was written by a search with other settings "
                         f"({ck['settings']})")


def write_checkpoint(ck: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ck, path)
