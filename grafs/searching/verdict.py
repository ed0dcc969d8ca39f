"""A search's verdict: the found formula against the model's own activation, both trained
from scratch with the search's recipe (grafs.search; ``result.verdict``)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Verdict:
    """The found formula against the model's own activation, each trained from scratch with
    the search's recipe over ``seeds`` (validation loss on the search's split, lower is better)."""
    formula: str
    original: str
    found_losses: list[float]
    original_losses: list[float]
    better: bool = field(init=False)
    no_worse: bool = field(init=False)

    def __post_init__(self):
        f, o = self.found_losses, self.original_losses
        ok = all(map(math.isfinite, f))
        gap = _mean(o) - _mean(f)
        # one seed per side gives no estimate of the noise: never "better" on it
        self.better = ok and min(len(f), len(o)) > 1 and gap > math.hypot(_sem(f), _sem(o))
        self.no_worse = ok and _mean(f) <= _mean(o) + _sem(o)

    def __str__(self) -> str:
        if self.formula == self.original:
            return (f"kept your {self.original}: the search found no formula to use instead "
                    f"(val loss {_mean(self.found_losses):.4g} ± {_sem(self.found_losses):.2g} "
                    f"over {len(self.found_losses)} seeds from scratch)")
        word = ("better" if self.better else "no worse (within the noise)" if self.no_worse
                else f"not better: keep {self.original}")
        if min(len(self.found_losses), len(self.original_losses)) < 2:
            word += " (one seed: no estimate of the noise; verdict_seeds >= 2 gives one)"
        return (f"found {self.formula}: val loss {_mean(self.found_losses):.4g} ± "
                f"{_sem(self.found_losses):.2g} against your {self.original} "
                f"{_mean(self.original_losses):.4g} ± {_sem(self.original_losses):.2g} over "
                f"{len(self.found_losses)} seeds from scratch — {word}")

    def to_dict(self) -> dict:
        return {"formula": self.formula, "original": self.original,
                "found_losses": self.found_losses, "original_losses": self.original_losses,
                "better": self.better, "no_worse": self.no_worse, "text": str(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        return cls(d["formula"], d["original"], list(d["found_losses"]), list(d["original_losses"]))


def _mean(v):
    return statistics.fmean(v) if v and all(map(math.isfinite, v)) else math.inf


def _sem(v):
    return statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 and all(map(math.isfinite, v)) else 0.0


def measure_verdict(result, trainer, original: str, seeds: int, seed: int) -> Verdict:
    """The found formula of ``result`` against ``original`` over ``seeds`` from-scratch
    trainings by ``trainer`` (seeds ``seed``, ``seed + 1``, ...; one set when they are the same
    formula)."""
    from grafs.grammar.parser import parse
    same = parse(result.formula) is parse(original)
    found = [trainer.val_loss(result.formula, seed + i) for i in range(seeds)]
    orig = found if same else [trainer.val_loss(original, seed + i) for i in range(seeds)]
    return Verdict(result.formula, original, found, orig)
