#!/usr/bin/env python
"""The long fault-injection campaign over every file grafs reads or writes (tests/test_faults.py
runs one trial per file and fault in CI; grafs.testing.faults explains faults and rules).

    OMP_NUM_THREADS=1 python scripts/faults.py --minutes 10            # the campaign
    python scripts/faults.py --minutes 1 --targets checkpoint --faults sigkill,disk_full
    python scripts/faults.py --trials 5 --json faults.json --markdown

Trial i of a (file, fault) pair draws from seed ``seed·1000003 + i``: a failure is reproduced
with ``--seed S --trials``, its pair and index being printed. The trials go round the pairs, so
every cell of the table gets about as many. Ctrl-C or SIGTERM stops the run and reports what
was done. Prints a table files × faults, each cell tried/clean/failed, then every failure;
the exit status is 1 if any trial failed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=None,
                   help="stop after this long (default: when --trials are done, else 10)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials per file and fault (default: as many as --minutes allow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default="",
                   help="comma-separated parts of file names to try (default: every file)")
    p.add_argument("--faults", default="", help="comma-separated faults (default: all)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one trial may take before it counts as failed (default 300)")
    p.add_argument("--json", default=None, help="write every outcome as JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.minutes is None and args.trials is None:
        args.minutes = 10.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    base = tempfile.mkdtemp(prefix="grafs-faults-")
    os.environ["GRAFS_CACHE_DIR"] = os.path.join(base, "cache")
    import torch
    torch.set_num_threads(1)
    from pathlib import Path

    from grafs.testing import faults as F
    chosen = [f for f in args.faults.split(",") if f] or list(F.FAULTS)
    bad = set(chosen) - set(F.FAULTS)
    if bad:
        print(f"unknown fault(s) {sorted(bad)}; choose from {', '.join(F.FAULTS)}", file=sys.stderr)
        return 2
    wanted = [w.lower() for w in args.targets.split(",") if w]
    targets = [t for t in F.all_targets()
               if not wanted or any(w in t.name.lower() for w in wanted)]
    for t in targets:
        why = t.available()
        if why is not None:
            print(f"skipped: {t.name} ({why})")
    t0 = time.perf_counter()
    targets = F.prepare(targets, Path(base) / "templates")
    print(f"prepared {len(targets)} files in {time.perf_counter() - t0:.1f} s; faults made "
          f"{'with tmpfs mounts' if F.can_mount() else 'by injection'}"
          f"{' (root: unreadable files by injection)' if F.is_root() else ''}", flush=True)
    pairs = [(t, f) for t in targets for f in chosen if f in t.faults]
    outcomes: list = []
    hows: dict = collections.defaultdict(collections.Counter)
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    t0 = time.perf_counter()
    i = 0
    try:
        while args.trials is None or i < args.trials:
            for t, f in pairs:
                if args.minutes is not None and time.perf_counter() - t0 > 60 * args.minutes:
                    raise StopIteration
                seed = args.seed * 1_000_003 + i
                o = F.run_trial(t, f, seed, Path(base), timeout=args.timeout)
                outcomes.append(o)
                hows[(t.name, f)][_kind_of_how(o.how)] += 1
                if not o.clean and not args.quiet:
                    print(f"FAIL {t.name} / {f} / trial {i} (seed {seed}; {o.how}):", flush=True)
                    for p in o.problems:
                        print(f"     {p[:500]}", flush=True)
            i += 1
            if not args.quiet:
                el = time.perf_counter() - t0
                print(f"round {i}: {len(outcomes)} trials in {el:.0f} s, "
                      f"{sum(not o.clean for o in outcomes)} failed", flush=True)
    except (StopIteration, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    print(f"\n{len(outcomes)} trials (seed {args.seed}) in {elapsed:.0f} s; each cell: "
          f"tried/clean/failed\n")
    print(F.table(outcomes, markdown=args.markdown))
    print("\nhow the faults were made (trials):")
    for f in ("unreadable", "disk_full", "read_only", "sigkill"):
        c = sum((hows[k] for k in hows if k[1] == f), collections.Counter())
        if c:
            print(f"  {f}: " + "; ".join(f"{k} ×{n}" for k, n in c.most_common()))
    failed = [o for o in outcomes if not o.clean]
    print(f"\nfailures: {len(failed)}")
    for o in failed:
        print(f"  {o.target} / {o.fault} (seed {o.seed}; {o.how}): {o.problems[0][:300]}")
    if args.json:
        from dataclasses import asdict
        with open(args.json, "w") as fh:
            json.dump({"seed": args.seed, "seconds": round(elapsed, 1),
                       "counts": {f"{k[0]} / {k[1]}": v for k, v in F.tally(outcomes).items()},
                       "outcomes": [asdict(o) for o in outcomes]}, fh, indent=1)
    return 1 if failed else 0


def _kind_of_how(how: str) -> str:
    """A fault's method without its random numbers, for tallying."""
    import re
    return re.sub(r"\d+", "N", how) or "as is"


if __name__ == "__main__":
    sys.exit(main())
