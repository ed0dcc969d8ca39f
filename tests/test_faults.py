"""Faults on every file grafs reads or writes (grafs.testing.faults): one trial per file and
fault; the harness itself (it catches a writer that is not atomic); temporary files of killed
writers; the one cache-directory rule; and under torch.distributed, a full disk on rank 0's
checkpoint write stops both gloo ranks at once with its GrafsError.

The long campaign is ``scripts/faults.py --minutes 10`` (docs/guide/reliability.md)."""
import datetime
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

import grafs.files
from grafs.callbacks.events import Callback
from grafs.errors import GrafsError
from grafs.testing import faults

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the trials run in forked processes")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    old = os.environ.get("GRAFS_CACHE_DIR")
    try:
        targets = faults.prepare(faults.all_targets(), root / "templates")
    finally:
        if old is not None:
            os.environ["GRAFS_CACHE_DIR"] = old
    return root, {t.name: t for t in targets}


def _target(prepared, name):
    root, targets = prepared
    if name not in targets:
        pytest.skip(f"{name} cannot be tried here")
    return root, targets[name]


PAIRS = [(t.name, f) for t in faults.all_targets() for f in t.faults]


@pytest.mark.parametrize("name,fault", PAIRS)
def test_every_file_and_fault(prepared, name, fault):
    root, t = _target(prepared, name)
    out = faults.run_trial(t, fault, 0, root)
    assert out.clean, (out.how, out.problems)


@pytest.mark.parametrize("fault", faults.WRITE_FAULTS[:2])
@pytest.mark.parametrize("name", ["search checkpoint", "study JSON", "search result (result.json)"])
def test_injected_write_faults_where_nothing_can_be_mounted(prepared, monkeypatch, name, fault):
    root, t = _target(prepared, name)
    monkeypatch.setattr(faults, "_MOUNT_OK", False)       # as on a machine without root
    out = faults.run_trial(t, fault, 1, root)
    assert out.clean, (out.how, out.problems)
    assert "tmpfs" not in out.how


def test_the_harness_catches_a_writer_that_is_not_atomic(prepared, monkeypatch):
    root, t = _target(prepared, "study JSON")

    def naive(path, write, what="file", advice=None):
        with open(path, "wb") as f:
            write(f)
    monkeypatch.setattr(grafs.files, "atomic_write", naive)
    monkeypatch.setattr(faults, "_MOUNT_OK", False)
    out = faults.run_trial(t, "disk_full", 0, root)
    text = " ".join(out.problems)
    assert "foreign exception escaped: OSError" in text and "last good file was changed" in text


def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path):
    f = tmp_path / "x.json"
    grafs.files.atomic_write_text(f, "old")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)          # a process that no longer runs
    dead = f.with_name(grafs.files.temp_path(f).name.replace(str(os.getpid()), str(pid)))
    dead.write_text("half")
    mine = grafs.files.temp_path(f)     # this process's own name: never swept
    grafs.files.atomic_write_text(f, "new")
    assert f.read_text() == "new" and not dead.exists()
    assert not mine.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_one_cache_directory_rule(monkeypatch, tmp_path):
    from grafs.compiler import codegen
    from grafs.compiler.cell import c_build
    monkeypatch.delenv("GRAFS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert grafs.files.cache_dir() == tmp_path / "xdg" / "grafs"
    assert c_build.cache_dir() == tmp_path / "xdg" / "grafs" / "c"
    assert codegen.cache_dir() == tmp_path / "xdg" / "grafs" / "generated"
    monkeypatch.setenv("GRAFS_CACHE_DIR", str(tmp_path / "own"))
    assert c_build.cache_dir() == tmp_path / "own" / "c"
    assert codegen.cache_dir() == tmp_path / "own" / "generated"
    monkeypatch.delenv("GRAFS_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert c_build.cache_dir() == tmp_path / "home" / ".cache" / "grafs" / "c"


def test_messages_are_judged_on_name_reason_and_advice():
    names = ["/x/ck/checkpoint.pt", "checkpoint.pt"]
    good = "cannot read the search checkpoint /x/ck/checkpoint.pt: the file is empty; start anew"
    assert faults.message_problems(good, names) == []
    assert len(faults.message_problems("an error: [Errno 22]", names)) == 3
    bad = good + "; or re-run torch.load with weights_only=False"
    assert any("unsafely" in p for p in faults.message_problems(bad, names))


# -- torch.distributed: 2 gloo ranks -----------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _err(err: BaseException, t0: float) -> dict:
    return {"type": type(err).__name__, "grafs": isinstance(err, GrafsError), "message": str(err),
            "seconds": time.perf_counter() - t0}


def _dist_worker(rank, port, tmp):
    tmp = Path(tmp)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    out = {"formula": faults._tiny_search(checkpoint_dir=tmp / "full").formula}
    inj = faults.Injector()

    class DiskFullFromNowOn(Callback):
        def on_epoch_end(self, info):   # after epoch 1's checkpoint: rank 0's next write fails
            if rank == 0 and inj.budget is None:
                inj.budget = [str((tmp / "disk").resolve()), 0, "enospc"]
    t0 = time.perf_counter()
    try:
        with inj:
            faults._tiny_search(checkpoint_dir=tmp / "disk", callbacks=[DiskFullFromNowOn()])
        out["disk_full"] = None
    except Exception as err:  # noqa: BLE001 - recorded, judged by the test
        out["disk_full"] = _err(err, t0)
    out["resumed"] = faults._tiny_search(checkpoint_dir=tmp / "disk", resume=tmp / "disk").formula
    if rank == 0:
        (tmp / "bad").mkdir()
        (tmp / "bad" / "checkpoint.pt").write_bytes(b"\x80\x02 not a checkpoint")
    torch.distributed.barrier()
    t0 = time.perf_counter()
    try:
        faults._tiny_search(resume=tmp / "bad")
        out["bad_resume"] = None
    except Exception as err:  # noqa: BLE001
        out["bad_resume"] = _err(err, t0)
    (tmp / f"rank{rank}.json").write_text(json.dumps(out))
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with the gloo backend")
def test_a_full_disk_on_rank_0_stops_every_rank_at_once(tmp_path):
    ctx = torch.multiprocessing.start_processes(_dist_worker, args=(_free_port(), str(tmp_path)),
                                                nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish in 120 s (one waits for the other)")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for r in (r0, r1):
        e = r["disk_full"]
        assert e is not None and e["grafs"], e
        assert "the disk is full" in e["message"] and "checkpoint.pt" in e["message"]
        assert "previous checkpoint is unchanged" in e["message"]
        assert e["seconds"] < 30, "a rank waited for the one that failed"
        assert r["resumed"] == r0["formula"]      # the last good checkpoint resumes
        b = r["bad_resume"]
        assert b is not None and b["grafs"] and "cannot read the search checkpoint" in b["message"]
    assert "rank 0 of 2 failed, rank 1 stops with it" in r1["disk_full"]["message"]
    assert "rank 0 of 2 failed" in r1["bad_resume"]["message"]
    assert r0["formula"] == r1["formula"]
    assert not [p for p in (tmp_path / "disk").iterdir() if ".tmp" in p.name]
