#!/usr/bin/env python
"""The long fuzzing campaign over every stage (tests/test_fuzz.py runs a small budget in CI).

    OMP_NUM_THREADS=1 python scripts/fuzz.py --n 100000            # the cheap stages
    python scripts/fuzz.py --n 100000 --minutes 40                 # stop early, report so far
    python scripts/fuzz.py --n 2000 --inductor 20 --triton 200     # + compiled backends

Expression i is drawn from its own seeded generator (seed·1000003 + i), so a failure is
reproducible from its number as well as from the printed text. Per stage it counts the
expressions that passed, those rejected with a grafs error (allowed: the messages are tallied)
and failures: any other exception, or a value mismatch (grafs.testing.fuzz explains the
tolerances). Ctrl-C or SIGTERM stops the run and reports what was done. The exit status is 1
if anything failed. ``--json FILE`` writes the counts and every failure.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import warnings

CHEAP = ("print", "sympy", "simplify", "derivative", "eager", "python", "discretize")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="expressions (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--stages", default=",".join(CHEAP),
                   help=f"comma-separated, from {', '.join(CHEAP)} (default: all of them)")
    p.add_argument("--discretize-every", type=int, default=10,
                   help="one random relaxed cell per this many expressions (default 10)")
    p.add_argument("--inductor", type=int, default=0, help="also compile the first N with Inductor")
    p.add_argument("--triton", type=int, default=0,
                   help="also run the first N through the Triton backend (interpreter on a CPU)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop after this long and report what was done")
    p.add_argument("--stage-timeout", type=int, default=120,
                   help="seconds one stage may take on one expression before it counts as a "
                        "failure (default 120)")
    p.add_argument("--max-gb", type=float, default=8.0,
                   help="address-space limit of this process: a stage that needs more fails "
                        "with MemoryError instead of exhausting a shared machine (default 8)")
    p.add_argument("--json", default=None, help="write the counts and failures as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    bad = set(s for s in args.stages.split(",") if s) - set(CHEAP)
    if bad:
        p.error(f"unknown stage(s) {sorted(bad)}; choose from {', '.join(CHEAP)}")
    return args


class StageTimeout(BaseException):
    """A stage ran longer than --stage-timeout seconds (a BaseException, so that code which
    falls back on any Exception, as simplify does when sympy fails, does not swallow it)."""


def _alarm(signum, frame):
    raise StageTimeout("the stage ran longer than --stage-timeout")


class Campaign:
    """Runs the stages on expression after expression and keeps the tallies."""

    def __init__(self, args):
        from grafs.testing import fuzz as F
        self.F, self.args = F, args
        self.stages = [s for s in args.stages.split(",") if s]
        self.cfg = F.GenConfig(depth=args.depth)
        self.ok = collections.Counter()
        self.points = collections.Counter()
        self.seconds = collections.Counter()
        self.rejected = collections.defaultdict(collections.Counter)
        self.failures: list[dict] = []
        self.slowest: dict[str, tuple[float, str]] = {}     # stage -> (seconds, expression)

    def run(self, stage: str, i: int, what: str, fn) -> None:
        from grafs.errors import GrafsError
        t0 = time.perf_counter()
        signal.alarm(self.args.stage_timeout)
        try:
            self.points[stage] += fn() or 0
            self.ok[stage] += 1
        except GrafsError as err:
            self.rejected[stage][kind_of(str(err))] += 1
        except (Exception, StageTimeout) as err:  # noqa: BLE001 - a fuzzer reports any escape
            kind = "mismatch" if isinstance(err, self.F.Mismatch) else type(err).__name__
            self.failures.append({"stage": stage, "index": i, "expr": what, "kind": kind,
                                  "error": str(err)[:2000],
                                  "where": traceback.format_exc().splitlines()[-3:]})
            if not self.args.quiet:
                print(f"FAIL {stage} #{i} {kind}: {what}\n     {str(err)[:300]}", flush=True)
        finally:
            signal.alarm(0)
        dt = time.perf_counter() - t0
        self.seconds[stage] += dt
        if dt > self.slowest.get(stage, (0.0, ""))[0]:
            self.slowest[stage] = (dt, what)

    def one(self, i: int) -> None:
        F, a = self.F, self.args
        ch = F.RandomChooser(a.seed * 1_000_003 + i)
        e = F.random_expr(ch, self.cfg)
        text = str(e)
        for stage in self.stages:
            if stage == "discretize":
                if i % a.discretize_every == 0:
                    self.run(stage, i, f"random cell #{i}",
                             lambda: F.check_discretize(F.random_cell(ch)))
            elif stage == "python":
                self.run(stage, i, text, lambda: F.check_backend(e, "python"))
            else:
                self.run(stage, i, text, lambda: F.STAGES[stage](e))
        if i < a.inductor:
            self.run("inductor", i, text, lambda: F.check_backend(e, "inductor"))
        if i < a.triton:
            self.run("triton", i, text, lambda: F.check_backend(e, "triton"))

    def report(self, done: int, elapsed: float) -> int:
        a = self.args
        names = (self.stages + (["inductor"] if a.inductor else [])
                 + (["triton"] if a.triton else []))
        print(f"\n{done} expressions (seed {a.seed}, depth ≤ {a.depth}) in {elapsed:.0f} s "
              f"= {done / max(elapsed, 1e-9):.2f} expressions/s")
        print(f"{'stage':<11}{'tried':>8}{'passed':>8}{'rejected':>9}{'failed':>7}"
              f"{'points':>11}{'seconds':>9}")
        summary = {}
        for s in names:
            nf = sum(1 for f in self.failures if f["stage"] == s)
            nr = sum(self.rejected[s].values())
            summary[s] = {"tried": self.ok[s] + nr + nf, "passed": self.ok[s], "rejected": nr,
                          "failed": nf, "points_compared": self.points[s],
                          "seconds": round(self.seconds[s], 1),
                          "slowest": self.slowest.get(s),
                          "rejections": dict(self.rejected[s].most_common())}
            print(f"{s:<11}{self.ok[s] + nr + nf:>8}{self.ok[s]:>8}{nr:>9}{nf:>7}"
                  f"{self.points[s]:>11}{self.seconds[s]:>9.0f}")
        print("\nmost common rejections (grafs errors), per stage:")
        for s in names:
            for msg, c in self.rejected[s].most_common(3):
                print(f"  {s:<11}{c:>6}  {msg}")
        print("\nslowest expression per stage:")
        for s in names:
            if s in self.slowest:
                sec, what = self.slowest[s]
                print(f"  {s:<11}{sec:>6.1f} s  {what[:100]}")
        mism = sum(f["kind"] == "mismatch" for f in self.failures)
        print(f"\nfailures: {len(self.failures)} ({len(self.failures) - mism} non-grafs "
              f"exceptions, {mism} value mismatches)")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"expressions": done, "seed": a.seed, "depth": a.depth,
                           "seconds": round(elapsed, 1), "stages": summary,
                           "failures": self.failures}, fh, indent=1)
        return 1 if self.failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.max_gb:
        import resource
        limit = int(args.max_gb * 2 ** 30)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    if args.triton and os.environ.get("TRITON_INTERPRET") is None:
        import torch
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported
    # generated modules (python export, inductor sources) go to a throwaway cache
    os.environ.setdefault("GRAFS_CACHE_DIR", tempfile.mkdtemp(prefix="grafs-fuzz-"))
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(1)
    import grafs.activations.terms  # noqa: F401  (registers the trainable families)

    c = Campaign(args)
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: stop and report
    old_alarm = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    done = 0
    try:
        for i in range(args.n):
            if args.minutes is not None and time.perf_counter() - t0 > 60 * args.minutes:
                break
            c.one(i)
            done = i + 1
            if not args.quiet and done % max(1, min(1000, args.n // 20)) == 0:
                el = time.perf_counter() - t0
                print(f"{done}/{args.n} expressions, {el:.0f} s ({done / el:.1f}/s), "
                      f"{len(c.failures)} failures", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted after {done} expressions", flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGALRM, old_alarm)
    return c.report(done, time.perf_counter() - t0)


def kind_of(message: str) -> str:
    """A rejection message without its specifics (numbers, sub-expressions), for tallying."""
    first = message.splitlines()[0]
    first = re.sub(r"\{[^}]*\}|'[^']*'|(?<![\w.])-?\d[\d.e+-]*", "…", first)
    return first[:90]


if __name__ == "__main__":
    sys.exit(main())
