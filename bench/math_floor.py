"""What a CPU search step would cost if the C cell's transcendental functions were free.

The C cell's kernels are bound by their transcendental functions and by the arithmetic of the
active ops (mixing, masks, partial sums). To tell the two apart, this bench builds the same
cell twice more with its math replaced by one multiplication per call (the generated C source's
prelude patched; nothing in grafs changes), and times three search steps side by side with the
plain step, interleaved, on the mnist1d CNN of bench.search_step (one thread):

* ``real``: the C cell as a search runs it;
* ``no libmvec``: glibc's vector math calls (erf, atan, expm1, sinh, cosh, log, log1p, sin,
  cos, pow) replaced by ``a * 1.0001`` (the calls, their work and the register spills
  around them gone);
* ``no math``: also the inline exp (and so tanh, sigmoid, the exp-based wrappers) and
  sigmoid's division replaced: what is left is the arithmetic of the active ops.

The stubbed cells compute wrong values: only their time means anything (a few steps, so the
network does not diverge). Each stage (active ops) gives the three cells the same mask, α
and γ.

    python -m bench.math_floor                       # stages 110 54 24 6
    python -m bench.math_floor --stages 110 6 --rounds 15
"""
from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys

import torch

from bench.search_step import PlainStep, SearchStep, TaskConfig, Timer
from bench.timing import table
import grafs.compiler.cell.c_emit as c_emit
from grafs.runtime.space import SearchSpace

KINDS = ("real", "no libmvec", "no math")
_stub = {"kind": "real"}
_prelude = c_emit.prelude


def _stubbed_prelude(isa: str) -> str:
    """The prelude of ``isa`` with the math of ``_stub["kind"]`` replaced by multiplications."""
    s = _prelude(isa)
    kind = _stub["kind"]
    if kind == "real":
        return s
    pre = re.escape(c_emit.ISAS[isa]["prefix"])
    # every libmvec declaration (one argument or two) becomes an inline multiplication
    s = re.sub(rf"V ({pre}v_\w+f)\(V\);", r"static inline V \1(V a) { return a * K(1.0001); }", s)
    s = re.sub(rf"V ({pre}vv_\w+f)\(V, V\);", r"static inline V \1(V a, V b) { return a * b; }", s)
    if kind == "no math":
        head = "static inline V iexp(V x) {"
        i = s.index(head)
        j = s.index("\n}\n", i)
        s = s[:i] + head + " return x * K(1.0002);" + s[j:]
        sig = "static inline V vsigmoid(V a) { return K(1) / (K(1) + vexp(-a)); }"
        if sig not in s:
            sys.exit("bench.math_floor: the C prelude changed; update its stubs")
        s = s.replace(sig, "static inline V vsigmoid(V a) { return a * K(0.25) + K(0.5); }")
    return s


@contextlib.contextmanager
def _math(kind: str):
    _stub["kind"] = kind
    try:
        yield
    finally:
        _stub["kind"] = "real"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, nargs="+", default=[110, 54, 24, 6])
    ap.add_argument("--rounds", type=int, default=25, help="interleaved rounds per stage")
    ap.add_argument("--steps", type=int, default=2, help="steps per round and kind")
    a = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    conf = TaskConfig("mnist1d")
    space = SearchSpace.grafs()
    train, val = conf.batches(dev)
    timer = Timer(train, val, dev, a.steps)
    plain = PlainStep(conf, dev)
    steps = {}
    for kind in KINDS:
        torch.manual_seed(0)
        steps[kind] = SearchStep(conf, dev, "auto", space)
        # builds in the calling thread, under its kind's prelude (a background build could
        # compile after the context is left)
        steps[kind].cell.c_build_in_background = False
    if steps["real"].cell.mode_for(dev) != "c":
        sys.exit("bench.math_floor measures the C cell; it cannot run here")
    c_emit.prelude = _stubbed_prelude      # read when a cell's source is generated

    def run(kind, n=None):
        with _math(kind):
            return timer.block(steps[kind], n)

    print("# A search step with the C cell's math free (mnist1d CNN, one thread)\n")
    print(f"torch {torch.__version__}; medians of {a.rounds} interleaved rounds of {a.steps} steps\n")
    rows = []
    for stage in a.stages:
        real = steps["real"].cell
        real.drop(real.num_active() - stage)
        for kind in KINDS[1:]:
            steps[kind].cell.load_state_dict(real.state_dict())     # the same mask, α and γ
        for kind in KINDS:
            run(kind, 3)                   # builds this set's kernels, then warms up
        timer.block(plain, 3)
        t = {k: [] for k in ("plain", *KINDS)}
        for _ in range(a.rounds):
            t["plain"].append(timer.block(plain))
            for kind in KINDS:
                t[kind].append(run(kind))
        m = {k: statistics.median(v) for k, v in t.items()}
        rows.append([str(stage), f"{m['plain'] * 1e3:.2f}",
                     *[f"{m[k] / m['plain']:.2f}x" for k in KINDS],
                     f"{m['no libmvec'] / m['real']:.2f}", f"{m['no math'] / m['real']:.2f}"])
        print(f"[{stage} ops] " + ", ".join(f"{k} {m[k] / m['plain']:.2f}x" for k in KINDS),
              file=sys.stderr, flush=True)
    print(table(rows, ["active ops", "plain ms", "search / plain", "no libmvec: search / plain",
                       "no math: search / plain", "no libmvec / real", "no math / real"]))


if __name__ == "__main__":
    main()
