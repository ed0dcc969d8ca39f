#!/usr/bin/env python
"""The long fuzzing campaign over every stage (tests/test_fuzz.py runs a small budget in CI).

    OMP_NUM_THREADS=1 python scripts/fuzz.py --n 100000            # the cheap stages
    python scripts/fuzz.py --n 2000 --inductor 20 --triton 200     # + compiled backends

Expression i is drawn from its own seeded generator (seed·1000003 + i), so a failure is
reproducible from its number as well as from the printed text. Per stage it counts the
expressions that passed, those rejected with a grafs error (allowed: the message is tallied)
and failures: any other exception, or a value mismatch (grafs.testing.fuzz explains the
tolerances). The exit status is 1 if anything failed. ``--json FILE`` writes the counts.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import traceback
import warnings

CHEAP = ("print", "sympy", "simplify", "derivative", "eager", "python", "discretize")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="expressions (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--stages", default=",".join(CHEAP),
                   help=f"comma-separated, from {', '.join(CHEAP)} (default: all of them)")
    p.add_argument("--discretize-every", type=int, default=5,
                   help="one random relaxed cell per this many expressions")
    p.add_argument("--inductor", type=int, default=0, help="also compile the first N with Inductor")
    p.add_argument("--triton", type=int, default=0,
                   help="also run the first N through the Triton backend (interpreter on a CPU)")
    p.add_argument("--json", default=None, help="write the counts as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    if args.triton and os.environ.get("TRITON_INTERPRET") is None:
        import torch
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported
    # generated modules (python export, inductor sources) go to a throwaway cache
    os.environ.setdefault("GRAFS_CACHE_DIR", tempfile.mkdtemp(prefix="grafs-fuzz-"))
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import grafs  # noqa: F401  (registers the trainable families)
    from grafs.errors import GrafsError
    from grafs.testing import fuzz as F

    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(CHEAP)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(CHEAP)}")
    cfg = F.GenConfig(depth=args.depth)
    ok: collections.Counter = collections.Counter()
    points: collections.Counter = collections.Counter()
    rejected: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[dict] = []
    seconds: collections.Counter = collections.Counter()

    def run(stage: str, i: int, what: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            points[stage] += fn() or 0
            ok[stage] += 1
        except GrafsError as err:
            rejected[stage][_kind(str(err))] += 1
        except Exception as err:  # noqa: BLE001 - a fuzzer reports every escape
            kind = "mismatch" if isinstance(err, F.Mismatch) else type(err).__name__
            failures.append({"stage": stage, "index": i, "expr": what, "kind": kind,
                             "error": str(err)[:2000],
                             "where": traceback.format_exc().splitlines()[-3:]})
            if not args.quiet:
                print(f"FAIL {stage} #{i} {kind}: {what}\n     {str(err)[:300]}", flush=True)
        seconds[stage] += time.perf_counter() - t0

    t_start = time.perf_counter()
    for i in range(args.n):
        ch = F.RandomChooser(args.seed * 1_000_003 + i)
        e = F.random_expr(ch, cfg)
        text = str(e)
        for stage in stages:
            if stage == "discretize":
                if i % args.discretize_every == 0:
                    def disc():
                        return F.check_discretize(F.random_cell(ch))
                    run(stage, i, f"random cell of expression #{i}", disc)
            elif stage == "python":
                run(stage, i, text, lambda: F.check_backend(e, "python"))
            else:
                run(stage, i, text, lambda: F.STAGES[stage](e))
        if i < args.inductor:
            run("inductor", i, text, lambda: F.check_backend(e, "inductor"))
        if i < args.triton:
            run("triton", i, text, lambda: F.check_backend(e, "triton"))
        if not args.quiet and (i + 1) % max(1, args.n // 20) == 0:
            el = time.perf_counter() - t_start
            print(f"{i + 1}/{args.n} expressions, {el:.0f} s ({(i + 1) / el:.1f}/s), "
                  f"{len(failures)} failures", flush=True)

    elapsed = time.perf_counter() - t_start
    names = list(dict.fromkeys(stages + (["inductor"] if args.inductor else [])
                               + (["triton"] if args.triton else [])))
    print(f"\n{args.n} expressions (seed {args.seed}, depth ≤ {args.depth}) in {elapsed:.0f} s "
          f"= {args.n / elapsed:.2f} expressions/s")
    print(f"{'stage':<11}{'tried':>8}{'passed':>8}{'rejected':>9}{'failed':>7}"
          f"{'points':>10}{'seconds':>9}")
    summary = {}
    for s in names:
        nf = sum(1 for f in failures if f["stage"] == s)
        nr = sum(rejected[s].values())
        summary[s] = {"tried": ok[s] + nr + nf, "passed": ok[s], "rejected": nr, "failed": nf,
                      "points_compared": points[s], "seconds": round(seconds[s], 1),
                      "rejections": dict(rejected[s].most_common())}
        print(f"{s:<11}{ok[s] + nr + nf:>8}{ok[s]:>8}{nr:>9}{nf:>7}{points[s]:>10}"
              f"{seconds[s]:>9.0f}")
    print("\nmost common rejections (grafs errors):")
    for s in names:
        for msg, c in rejected[s].most_common(3):
            print(f"  {s:<11}{c:>6}  {msg}")
    print(f"\nfailures: {len(failures)} ({sum(f['kind'] != 'mismatch' for f in failures)} "
          f"non-grafs exceptions, {sum(f['kind'] == 'mismatch' for f in failures)} mismatches)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "seed": args.seed, "depth": args.depth,
                       "seconds": round(elapsed, 1), "stages": summary,
                       "failures": failures}, fh, indent=1)
    return 1 if failures else 0


def _kind(message: str) -> str:
    """A rejection message without its specifics (numbers, sub-expressions), for tallying."""
    import re
    first = message.splitlines()[0]
    first = re.sub(r"\{[^}]*\}|'[^']*'|-?\d[\d.e+-]*", "…", first)
    return first[:90]


if __name__ == "__main__":
    sys.exit(main())
