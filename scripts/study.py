"""Search-quality studies (docs/results-*.md): searches over seeds, then students from scratch.

For a built-in task and a search variant: a search per seed (and, on ``--task teacher``, per
teacher activation, with the found formula's shape error: relative L2 after an affine fit on
[-3, 3], grafs.tasks.teacher.shape_error); then (``--eval-seeds`` > 0) the found formulas and
the five baselines trained from scratch, test metric mean ± SEM.

    python scripts/study.py --task teacher --variant paper --seeds 0 1 2 --out runs/teacher-paper.json
    python scripts/study.py --task teacher --variant grafs --seeds 0 1 2 --eval-seeds 5 \
        --out runs/teacher-grafs.json
    python scripts/study.py --task digits --variant grafs --seeds 0 1 2 --eval-seeds 5 \
        --out runs/digits-grafs.json
    python scripts/study.py --report runs/teacher-paper.json runs/teacher-grafs.json

Searches run in ``--jobs`` processes of one torch thread each; results are appended to the
JSON file as they finish, and a re-run skips what is there.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

#: search variants: task overrides on top of the task's defaults
VARIANTS = {
    "default": {},                                      # the task's own defaults
    "paper": {"arch_lr": 3e-3, "normalize": False},     # the paper's method, the task's budget
    "lr": {"arch_lr": 3e-2, "normalize": False},        # a 10x larger arch learning rate only
    "grafs": {"arch_lr": 3e-2, "normalize": True},      # + op-output normalisation
    "long": {"arch_lr": 3e-2, "normalize": True,        # + twice the epochs, drops from 8
             "epochs": 60, "shrink_start_epoch": 8},
    "wait": {"arch_lr": 3e-2, "normalize": True,        # grafs, first drop at epoch 10, not 4
             "shrink_start_epoch": 10},
    "lr-high": {"arch_lr": 1e-1, "normalize": True},    # grafs with arch_lr 0.1
    "mean": {"arch_lr": 3e-2, "normalize": True},       # grafs, Dirichlet draws -> their mean
    "single": {"single_level": True},                   # the task's defaults, single-level steps
}
# every variant but `default` is one search (as when it was measured: the teacher task's
# default became three restarts later, docs/results-teacher.md)
for _name, _v in VARIANTS.items():
    if _name != "default":
        _v["restarts"] = 1
#: variants whose cell mixes with the Dirichlet mean instead of a sample (DARTS-like)
MEAN_VARIANTS = {"mean"}


def _search_one(task_name: str, teacher: str | None, seed: int, variant: str,
                extra: dict | None = None) -> dict:
    import torch
    torch.set_num_threads(1)
    from grafs.protocol.task_search import search_task
    from grafs.tasks import get_task
    from grafs.testing.sampling import mean_samples
    opts = {"teacher": teacher} if teacher else {}
    task = get_task(task_name, **opts, **{**VARIANTS[variant], **(extra or {})})
    t0 = time.perf_counter()
    with mean_samples() if variant in MEAN_VARIANTS else contextlib.nullcontext():
        r = search_task(task, seed=seed, progress=False)
    row = {"kind": "search", "task": task_name, "teacher": teacher, "seed": seed,
           "variant": variant, "overrides": extra or {}, "formula": r.formula, "seconds": time.perf_counter() - t0,
           "first_drop_entropy": _first_drop_entropy(r.history)}
    if r.history.get("restarts"):      # search_config.restarts > 1: every restart, and the pick
        row["restarts"] = r.history["restarts"]
    if teacher:
        from grafs.tasks.teacher import shape_error
        row["shape_error"] = shape_error(r.formula, teacher)
    return row


def _first_drop_entropy(history: dict) -> float | None:
    """Min over holes of the normalised entropy of the Dirichlet mean before the first drop."""
    if not history.get("dropped") or not history.get("entropy"):
        return None
    first = min(e for e, _, _ in history["dropped"])
    return min(history["entropy"][first - 1]) if first >= 1 else None


_STUDY = "the study file"
_ELSEWHERE = "move it away or pass another --out (a new study starts from an empty file)"


def _load(path: Path) -> list[dict]:
    """The rows of a study file (none when there is no file yet); an unusable file is a
    GrafsError naming it."""
    from grafs.files import read_error, read_json
    if not path.exists():
        return []
    rows = read_json(path, _STUDY, _ELSEWHERE, list, expected="a study file of scripts/study.py")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or r.get("kind") not in ("search", "eval") or (
                r["kind"] == "search" and not isinstance(r.get("seed"), int)) or (
                r["kind"] == "eval" and not isinstance(r.get("table"), dict)):
            raise read_error(path, _STUDY, f"row {i} is not a search or evaluation row of "
                             f"scripts/study.py (a file of another kind or version)", _ELSEWHERE)
    return rows


def _save(path: Path, rows: list[dict]) -> None:
    """Write the study file atomically (a failure is a GrafsError; the old file is kept)."""
    from grafs.files import atomic_write_json, write_error
    kept = f"{path} keeps the rows written before"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, "the study directory", err, kept) from None
    atomic_write_json(path, rows, _STUDY, kept, indent=1)


def run(args) -> None:
    from grafs.tasks.teacher import TEACHERS
    out = Path(args.out)
    rows = _load(out)
    cases = (args.teachers or list(TEACHERS.values())) if args.task == "teacher" else [None]
    done = {(r.get("teacher"), r["seed"]) for r in rows if r["kind"] == "search"}
    todo = [(t, s) for t in cases for s in args.seeds if (t, s) not in done]
    with ProcessPoolExecutor(args.jobs) as ex:
        futs = [ex.submit(_search_one, args.task, t, s, args.variant, args.set) for t, s in todo]
        for f in futs:
            r = f.result()
            rows.append(r)
            _save(out, rows)
            err = f"shape error {r['shape_error']:.3f}  " if "shape_error" in r else ""
            print(f"{r.get('teacher') or args.task} seed {r['seed']}: {err}{r['formula']}  "
                  f"({r['seconds']:.0f} s)", flush=True)
    if not args.eval_seeds:
        return
    import torch
    torch.set_num_threads(1)
    from grafs.protocol.evaluate import evaluate, scaled_baselines
    from grafs.tasks import get_task
    from grafs.tasks.base import evaluation_overrides
    # the task as searched (its data/model options, e.g. student_norm) with its own evaluation
    # config: search-only changes such as epochs=30 do not change how students are trained
    eval_opts = evaluation_overrides(args.set or {})
    for t in cases:
        task = get_task(args.task, **{**eval_opts, **({"teacher": t} if t else {})})
        extra = scaled_baselines(task) if args.scaled_baselines else {}   # grafs.evaluate
        old = [r for r in rows if r["kind"] == "eval" and r.get("teacher") == t]
        found = {f"found s{r['seed']}": r["formula"] for r in rows
                 if r["kind"] == "search" and r.get("teacher") == t}
        found.update(extra)
        if old and all(n in {x["name"] for x in old[0]["table"]["rows"]} for n in found):
            continue
        # (an evaluation without every search or scaled baseline asked for is redone; its
        # finished runs are cached)
        rows = [r for r in rows if not any(r is o for o in old)]
        searches = [r["seconds"] for r in rows if r["kind"] == "search" and r.get("teacher") == t]
        # every finished run is cached beside the study file, so an interrupted evaluation
        # resumes where it stopped
        table = evaluate(task, found, seeds=args.eval_seeds, progress=False, jobs=args.jobs,
                         search_seconds=sum(searches) / len(searches),
                         out_dir=out.with_suffix("") if out.suffix else out.with_name(out.name + "-runs"))
        rows.append({"kind": "eval", "task": args.task, "teacher": t, "variant": args.variant,
                     "table": table.to_dict()})
        _save(out, rows)
        print(table.markdown(), flush=True)


def report(paths: list[str], plots: str | None = None) -> str:
    """Markdown tables of one or more study files (formulas in their rounded display form;
    the exact ones are in the JSON files). ``plots``: a folder for one figure per evaluation
    (the found formulas, the baselines dashed, each with its derivative)."""
    lines: list[str] = []
    for p in paths:
        rows = _load(Path(p))
        searches = [r for r in rows if r["kind"] == "search"]
        if not searches:
            continue
        variant = searches[0]["variant"]
        teacher = "shape_error" in searches[0]
        overrides = searches[0].get("overrides", {})
        settings = {**VARIANTS[variant], **overrides}
        lines += [f"#### Variant `{variant}` ({settings}), `{p}`", ""]
        lines += ["| " + ("teacher | " if teacher else "") + "seed | "
                  + ("shape error | with input scale | " if teacher else "")
                  + "entropy before 1st drop | search s | found |",
                  "|" + "---|" * (7 if teacher else 4)]
        for r in sorted(searches, key=lambda r: (r.get("teacher") or "", r["seed"])):
            ent = r.get("first_drop_entropy")
            lines.append("| " + (f"`{r['teacher']}` | " if teacher else "") + f"{r['seed']} | "
                         + (f"{r['shape_error']:.3f} | {_scaled_error(r):.3f} | "
                            if teacher else "")
                         + f"{'' if ent is None else f'{ent:.4f}'} | {r['seconds']:.0f} | "
                         f"`{display(r['formula'])}` |")
        if teacher:
            ok = sum(r["shape_error"] <= 0.1 for r in searches)
            ok_s = sum(_scaled_error(r) <= 0.1 for r in searches)
            lines += ["", f"{ok} of {len(searches)} searches within shape error 0.1 "
                      f"({ok_s} with the input scale fitted too)."]
        lines.append("")
        for r in rows:
            if r["kind"] == "eval":
                lines += _eval_table(r)
                if plots:
                    lines += [f"![found activations and baselines]({_plot(r, plots, overrides)})",
                              ""]
    return "\n".join(lines)


def _plot(r: dict, folder: str, overrides: dict) -> str:
    """Plot the found formulas of one evaluation with the baselines; returns the file's path
    (named after the task, variant, overrides and teacher, so studies do not overwrite each
    other's figures)."""
    from grafs.plot import plot_activations
    rows = r["table"]["rows"]
    found = [x for x in rows if x["name"].startswith("found")]
    name = f"{r['task']}-{r['variant']}" + "".join(f"-{k}{v}" for k, v in overrides.items()) \
        + (f"-{r['teacher']}" if r.get("teacher") else "")
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    path = str(Path(folder) / f"{name}.png")
    Path(folder).mkdir(parents=True, exist_ok=True)
    baselines = ["relu(x)", "gelu(x)", "silu(x)", "elu(x)", "leaky_relu(x)"]
    return plot_activations([x["formula"] for x in found], path,
                            labels=[x["name"] for x in found], baselines=baselines,
                            title=f"{r['task']}" + (f" (teacher {r['teacher']})" if r.get("teacher")
                                                    else "")
                            + ": found activations (solid), baselines (dashed)")


def display(formula: str) -> str:
    from grafs.grammar.display import display as _display
    return _display(formula)


def _scaled_error(r: dict) -> float:
    """The shape error with the input scale fitted too (the previous layer absorbs it)."""
    from grafs.tasks.teacher import shape_error
    return shape_error(r["formula"], r["teacher"], input_scale=True)


PLAIN = ("ReLU", "GELU", "SiLU", "ELU", "LeakyReLU")


def _verdict(x: dict, best: dict, hib: bool) -> str:
    better = x["mean"] > best["mean"] + best["sem"] if hib else x["mean"] < best["mean"] - best["sem"]
    tie = x["mean"] >= best["mean"] - best["sem"] if hib else x["mean"] <= best["mean"] + best["sem"]
    return "better by > 1 SEM" if better else ("within 1 SEM" if tie else "worse")


def _welch_t(x: dict, best: dict, hib: bool) -> float:
    """Welch's t of a row against the best baseline, signed so that > 0 is better: the
    difference of the means over the root of the summed squared SEMs (the issue's one-SEM test
    looks at the baseline's SEM only; |t| ≳ 2.3 is about 5% two-sided at 5 seeds each)."""
    d = (x["mean"] - best["mean"]) * (1 if hib else -1)
    se = (x["sem"] ** 2 + best["sem"] ** 2) ** 0.5
    return d / se if se > 0 else float("inf") if d > 0 else float("-inf") if d < 0 else 0.0


def _eval_table(r: dict) -> list[str]:
    """The students' table: each found formula (and scaled baseline) against the best of the
    five baselines, and, where the study has them, against the best scaled baseline."""
    tab = r["table"]
    hib = tab["higher_is_better"]
    pick = max if hib else min
    best = pick([x for x in tab["rows"] if x["name"] in PLAIN], key=lambda x: x["mean"])
    scaled = [x for x in tab["rows"] if "·" in x["name"] and x["scores"]]
    best_s = pick(scaled, key=lambda x: x["mean"]) if scaled else None
    n = max(len(x["scores"]) for x in tab["rows"])   # a row whose runs all failed has none
    what = f"teacher `{r['teacher']}`" if r.get("teacher") else f"task `{r['task']}`"
    ratio = ""
    if tab.get("search_seconds") and tab.get("eval_seconds"):
        ratio = f"; search/evaluation wall time {tab['search_seconds'] / tab['eval_seconds']:.2f}"
    head = (f"Students for {what}: test {tab['metric']}, mean ± SEM over {n} seeds; best "
            f"baseline {best['name']} {best['mean']:.4f} ± {best['sem']:.4f}")
    if best_s is not None:
        head += f"; best scaled baseline {best_s['name']} {best_s['mean']:.4f} ± {best_s['sem']:.4f}"
    cols = "| activation | {} | vs best baseline |{} Welch t | formula |".format(
        tab["metric"], " vs best scaled |" if best_s is not None else "")
    out = [head + ratio + ".", "", cols, "|---" * (6 if best_s is not None else 5) + "|"]
    for x in tab["rows"]:
        found = x["name"].startswith("found")
        judged = found or x in scaled
        formula = f"`{display(x['formula'])}`" if found else ""
        failed = [f for f in tab.get("failures", []) if f["name"] == x["name"]]
        if not x["scores"]:   # every run failed (e.g. diverged at the first step)
            why = failed[0]["error"] if failed else "no run finished"
            out.append(f"| {x['name']} | failed in {len(failed)} of {len(failed)} runs | worse |"
                       + (" worse |" if best_s is not None else "") + f" | {formula} {why} |")
            continue
        note = f" ({len(failed)} runs failed)" if failed else ""
        v = _verdict(x, best, hib) if judged else ""
        vs = (f" {_verdict(x, best_s, hib) if found else ''} |" if best_s is not None else "")
        t = f"{_welch_t(x, best, hib):+.1f}" if judged else ""
        out.append(f"| {x['name']} | {x['mean']:.4f} ± {x['sem']:.4f}{note} | {v} |{vs} {t} | "
                   f"{formula} |")
    return out + [""]


def _overrides(items: list[str]) -> dict:
    from grafs.errors import GrafsError
    from grafs.tasks.base import parse_overrides
    try:
        return parse_overrides(items)
    except GrafsError as err:
        raise SystemExit(f"study.py: {err}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="teacher")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="grafs")
    ap.add_argument("--teachers", nargs="*", help="--task teacher: formulas "
                    "(default: grafs.tasks.teacher.TEACHERS)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="further task overrides on top of the variant's, e.g. epochs=30 "
                    "(values parse as JSON, else as strings)")
    ap.add_argument("--eval-seeds", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--scaled-baselines", action="store_true",
                    help="also evaluate the five baselines times their op-normalisation "
                         "constant (1.412·ReLU, ...): does a found formula win by its shape or "
                         "by its scale?")
    ap.add_argument("--out", default="runs/study.json")
    ap.add_argument("--report", nargs="*", help="print markdown tables of these study files")
    ap.add_argument("--plots", help="with --report: write a figure per evaluation into this "
                    "folder and link it")
    args = ap.parse_args(argv)
    args.set = _overrides(args.set)
    from grafs.errors import GrafsError
    try:
        if args.report:
            print(report(args.report, args.plots))
        else:
            run(args)
    except GrafsError as err:     # an unusable or unwritable study file: say which, and why
        print(f"study.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
