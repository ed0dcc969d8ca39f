"""Search models no built-in task covers, exactly as a user calls grafs.search, and score the
found formulas against baselines trained from scratch with the same recipe.

    python scripts/own_models.py --seeds 0 1 2 --eval-seeds 5 --out docs/data/own-models/study.json

Setups (data generated or shipped offline): an MLP without normalisation on scikit-learn's
digits, a small CNN with BatchNorm on the same digits as 8×8 images, and a pre-norm
transformer-style MLP block (LayerNorm + GELU, residual) on mnist1d's generator.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from torch import nn

import grafs
from grafs.searching.data import split_dataset
from grafs.searching.scratch import ScratchTrainer


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(d.target)


def mnist1d():
    import mnist1d
    args = mnist1d.data.get_dataset_args()
    args.num_samples = 4000
    d = mnist1d.data.make_dataset(args)
    return torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"])


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


def setups():
    def mlp():
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                             nn.Linear(128, 10))

    def cnn():
        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *block(1, 16), *block(16, 32),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def transformer():
        return nn.Sequential(nn.Linear(40, 64), Block(64), Block(64), nn.LayerNorm(64), nn.Linear(64, 10))

    adam = (lambda lr: (lambda p: torch.optim.Adam(p, lr=lr)))
    return {"mlp-digits": (mlp, digits, adam(3e-3), 64),
            "cnn-bn-digits": (cnn, digits, adam(3e-3), 64),
            "transformer-mnist1d": (transformer, mnist1d, adam(1e-3), 64)}


BASELINES = ["relu(x)", "gelu(x)", "silu(x)", "elu(x)"]


def mean_sem(v):
    if not v or not all(map(math.isfinite, v)):
        return math.inf, 0.0
    return statistics.fmean(v), (statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0)


ORIGINAL = {"mlp-digits": "relu(x)", "cnn-bn-digits": "relu(x)", "transformer-mnist1d": "gelu(x)"}


def report_markdown(report: dict) -> str:
    """One table per setup: baselines and found formulas (mean ± SEM of the held-out loss),
    each found one against the original activation and the best baseline."""
    from grafs.grammar.display import display
    out = []
    for name, r in report.items():
        rows = {row["name"]: row for row in r["rows"]}
        orig = rows[ORIGINAL[name]]
        best = min((rows[b] for b in BASELINES), key=lambda row: row["mean"])
        out.append(f"**{name}** (original {orig['name']}; best baseline {best['name']} "
                   f"{best['mean']:.4f} ± {best['sem']:.4f}; an evaluation run "
                   f"{r['eval_run_seconds']:.1f} s)\n")
        ev = r["eval_run_seconds"]
        out.append("| activation | held-out loss | vs original | vs best baseline | all s (÷ eval run) "
                   "| search + pick (÷ eval run) | check (÷) | verdict (÷) |")
        out.append("|---|---|---|---|---|---|---|---|")
        for b in BASELINES:
            out.append(f"| {b} | {rows[b]['mean']:.4f} ± {rows[b]['sem']:.4f} | | | | | | |")
        for f, t in zip(r["found"], r["search_seconds"]):
            row = rows[f"found seed {f['seed']}"]

            def cmp(ref):
                if not math.isfinite(row["mean"]):
                    return "fails"
                if ref["mean"] - row["mean"] > math.hypot(row["sem"], ref["sem"]):
                    return "**better**"
                return "no worse" if row["mean"] <= ref["mean"] + ref["sem"] else "worse"
            out.append(f"| seed {f['seed']}: `{display(f['formula'])}` | {row['mean']:.4f} ± "
                       f"{row['sem']:.4f} | {cmp(orig)} | {cmp(best)} | {t:.0f} ({t / ev:.1f}) | "
                       + (" | ".join(f"{f[k] / ev:.1f}" for k in ("search_seconds", "check_seconds",
                                                                  "verdict_seconds"))
                          if "search_seconds" in f else "| |") + " |")
            if f"searched seed {f['seed']}" in rows:     # the check or the verdict replaced it
                row = rows[f"searched seed {f['seed']}"]
                out.append(f"| (searched: `{display(f['searched'])}`) | {row['mean']:.4f} ± "
                           f"{row['sem']:.4f} | {cmp(orig)} | {cmp(best)} | | | | |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", nargs="+", default=list(setups()))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--eval-seeds", type=int, default=5)
    p.add_argument("--out", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra grafs.search arguments (an ablation), e.g. restarts=3 arch_weight_decay=0")
    p.add_argument("--report", help="print the markdown tables of a study's JSON and stop")
    args = p.parse_args(argv)
    if args.report:
        with open(args.report) as fh:
            print(report_markdown(json.load(fh)))
        return None
    extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    torch.set_num_threads(1)
    report = {}
    for name in args.setups:
        make_model, make_data, opt, bs = setups()[name]
        x, y = make_data()
        g = torch.Generator().manual_seed(1234)       # a held-out test split the search never sees
        perm = torch.randperm(len(x), generator=g)
        n_test = len(x) // 5
        test, train = perm[:n_test], perm[n_test:]
        rows, t_search, t_eval = [], [], []
        found = []
        for s in args.seeds:
            torch.manual_seed(s)
            t0 = time.perf_counter()
            r = grafs.search(make_model(), (x[train], y[train]), seed=s, batch_size=bs,
                             optimizer=opt, progress=False, **{"verdict_seeds": 0, **extra})
            t_search.append(time.perf_counter() - t0)
            # what the search itself found, before the check or the verdict replaced it
            raw = r.history.get("unusable_formula") or r.history.get("rejected_formula") or r.formula
            found.append({"seed": s, "formula": r.formula, "searched": raw, "display": r.display,
                          "epochs": r.settings["epochs"], "seconds": t_search[-1],
                          # the search with its pick, the check, the verdict (grafs.search's own clocks)
                          "search_seconds": r.search_seconds,
                          "check_seconds": r.settings.get("check_seconds", 0.0),
                          "verdict_seconds": r.settings.get("verdict_seconds", 0.0),
                          "verdict": r.history.get("verdict"),
                          "warnings": r.history.get("warnings", [])})
            print(f"{name} seed {s}: {r.formula}  ({t_search[-1]:.0f} s, {r.settings['epochs']} epochs)", flush=True)
        epochs = found[0]["epochs"]
        # evaluation: train on the whole training part from scratch, score on the held-out test
        trainer = ScratchTrainer(make_model(), (x[train], y[train]), (x[test], y[test]), epochs=epochs,
                                 batch_size=bs, loss_fn=None, optimizer=opt, scheduler=None,
                                 activation_types=grafs.searching.DEFAULT_TYPES,
                                 device=torch.device("cpu"))
        runs = [(b, b) for b in BASELINES] + [(f"found seed {f['seed']}", f["formula"]) for f in found]
        runs += [(f"searched seed {f['seed']}", f["searched"]) for f in found if f["searched"] != f["formula"]]
        for label, formula in runs:
            t0 = time.perf_counter()
            losses = [trainer.val_loss(formula, seed=100 + k) for k in range(args.eval_seeds)]
            t_eval.append((time.perf_counter() - t0) / args.eval_seeds)
            m, e = mean_sem(losses)
            rows.append({"name": label, "formula": formula, "losses": losses, "mean": m, "sem": e})
            print(f"  {label:18s} {m:.4f} ± {e:.4f}  {formula}", flush=True)
        report[name] = {"settings": extra, "found": found, "rows": rows, "search_seconds": t_search,
                        "eval_run_seconds": statistics.fmean(t_eval)}
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(report, fh, indent=1)
    return report


if __name__ == "__main__":
    main()
