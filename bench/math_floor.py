"""What a CPU search step would cost if the C cell's transcendental functions were free.

The C cell's kernels are bound by their transcendental functions and by the arithmetic of the
active ops (mixing, masks, partial sums). To tell the two apart, this bench builds the same
cell twice more with its math replaced by one multiplication per call (the generated C source's
prelude patched; nothing in grafs changes), and times three search steps side by side with the
plain step, interleaved, on the mnist1d CNN of bench.search_step (one thread):

* ``real``: the C cell as a search runs it;
* ``no libmvec``: glibc's vector math calls (erf, atan, expm1, sinh, cosh, log, log1p, sin,
  cos, pow) replaced by a clamp to [-4, 4] (a few vector instructions: the calls, their work
  and the register spills around them gone);
* ``no math``: also the inline exp, tanh, asinh and sqrt and sigmoid's division replaced:
  what is left is the arithmetic of the active ops (mixing, masks, partial sums).

The stubbed cells compute wrong values: only their time means anything. Each stage (active
ops) gives the three cells the same mask, α and γ, and every timed block starts from the
stage's weights, α, γ and optimizer states (restored outside the timing), so no cell times a
network its wrong values have driven to NaN; a block that ends with non-finite weights is
counted. The table names the libmvec functions each stage's kernels call (with none, the
``no libmvec`` cell is the real one and its column is the noise).

    python -m bench.math_floor                       # stages 110 54 24 6
    python -m bench.math_floor --stages 110 6 --rounds 15
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import re
import statistics
import subprocess
import sys

import torch

from bench.search_step import PlainStep, SearchStep, Timer, cpu_stage_bench
from bench.timing import table
import grafs.compiler.cell.c_emit as c_emit

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
    # every libmvec declaration (one argument or two) becomes a few inline instructions: a
    # clamp to [-4, 4] (bounded, so the network stays finite: a linear stand-in made softplus
    # e^x, and the weights NaN within two steps), defined after the prelude's `sel`
    clamp = "sel(a > K(4), K(4), sel(a < K(-4), K(-4), a))"
    one = re.findall(rf"V ({pre}v_\w+f)\(V\);", s)
    two = re.findall(rf"V ({pre}vv_\w+f)\(V, V\);", s)
    s = re.sub(rf"V ({pre}v+_\w+f)\(V", r"static inline V \1(V", s)      # prototypes
    bodies = "".join([f"static inline V {f}(V a) {{ return {clamp}; }}\n" for f in one]
                     + [f"static inline V {f}(V a, V b) {{ a = a * b; return {clamp}; }}\n"
                        for f in two])
    i = s.index("static inline V sel(")
    j = s.index("\n", i) + 1
    s = s[:j] + bodies + s[j:]
    if kind == "no math":
        for name, body in (("iexp", "return x * K(1.0002);"), ("vtanh", "return x * K(0.9);"),
                           ("vasinh", "return x * K(0.8);")):
            s = _replace_body(s, f"static inline V {name}(V x) {{", body)
        for old, new in ((_SIGMOID, "static inline V vsigmoid(V a) { return a * K(0.25) + K(0.5); }"),
                         (f"#define vsqrt {c_emit.ISAS[isa]['sqrt']}", "#define vsqrt(a) (a)")):
            if old not in s:
                sys.exit("bench.math_floor: the C prelude changed; update its stubs")
            s = s.replace(old, new)
    return s


_SIGMOID = "static inline V vsigmoid(V a) { return K(1) / (K(1) + vexp(-a)); }"


def _replace_body(s: str, head: str, body: str) -> str:
    """``s`` with the body of the function opening with ``head`` (closed by a ``}`` line)
    replaced."""
    if head not in s:
        sys.exit(f"bench.math_floor: the C prelude changed ({head!r}); update its stubs")
    i = s.index(head)
    j = s.index("\n}\n", i)
    return s[:i] + head + " " + body + s[j:]


def _libmvec_calls(functions) -> list[str]:
    """The libmvec functions called by the shared libraries that hold the ctypes
    ``functions`` (their undefined ``_ZGV`` symbols, as ``nm`` lists them; "?" without ``nm``).
    A library is found by its function's address in /proc/self/maps (a build is loaded from a
    temporary name, then renamed)."""
    names = set()
    for fn in functions:
        path = _mapped_path(ctypes.cast(fn, ctypes.c_void_p).value)
        try:
            out = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True,
                                 text=True, check=True).stdout
        except (OSError, TypeError, subprocess.CalledProcessError):
            return ["?"]
        names.update(re.findall(r"_ZGV\w+?N\d+v+_(\w+?)f\b", out))
    return sorted(names)


def _mapped_path(address: int) -> str | None:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= address < hi and len(parts) >= 6:
                    return parts[5]
    except OSError:
        pass
    return None


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
    a, dev, conf, space, timer, plain = cpu_stage_bench(ap)
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
    try:
        rows = _measure(a, steps, plain, timer)
    finally:
        c_emit.prelude = _prelude
    print(table(rows, ["active ops", "plain ms", "search / plain", "no libmvec: search / plain",
                       "no math: search / plain", "no libmvec / real", "no math / real",
                       "libmvec functions called", "blocks ending non-finite"]))


def _snapshot(step: SearchStep) -> dict:
    st = step.stepper
    return {"params": [p.detach().clone() for p in step.model.parameters()],
            "opts": [copy.deepcopy(o.state_dict()) for o in (st.w_opt, st.a_opt)]}


def _restore(step: SearchStep, snap: dict) -> None:
    st = step.stepper
    with torch.no_grad():
        for p, v in zip(step.model.parameters(), snap["params"]):
            p.copy_(v)
    for o, sd in zip((st.w_opt, st.a_opt), snap["opts"]):
        o.load_state_dict(copy.deepcopy(sd))


def _finite(step: SearchStep) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in step.model.parameters())


def _measure(a, steps: dict, plain: PlainStep, timer: Timer) -> list[list[str]]:
    def run(kind, n=None):
        with _math(kind):
            return timer.block(steps[kind], n)

    print("# A search step with the C cell's math free (mnist1d CNN, one thread)\n")
    print(f"torch {torch.__version__}; medians of {a.rounds} interleaved rounds of {a.steps} steps\n")
    rows = []
    for stage in a.stages:
        real = steps["real"].cell
        real.drop(real.num_active() - stage)
        snap = _snapshot(steps["real"])
        for kind in KINDS:          # the same weights, mask, α, γ and optimizer states
            if kind != "real":
                steps[kind].cell.load_state_dict(real.state_dict())
                _restore(steps[kind], snap)
            run(kind, 3)            # builds this set's kernels, then warms up
        timer.block(plain, 3)
        t = {k: [] for k in ("plain", *KINDS)}
        bad = {k: 0 for k in KINDS}
        for _ in range(a.rounds):
            t["plain"].append(timer.block(plain))
            for kind in KINDS:
                _restore(steps[kind], snap)
                t[kind].append(run(kind))
                bad[kind] += not _finite(steps[kind])
        m = {k: statistics.median(v) for k, v in t.items()}
        k = real._generated_last["c"][1]._k        # the real cell's build of this stage
        calls = _libmvec_calls([k.lib().grafs_cell_fwd, k.one_pass().grafs_cell_fwd_dx])
        rows.append([str(stage), f"{m['plain'] * 1e3:.2f}",
                     *[f"{m[k] / m['plain']:.2f}x" for k in KINDS],
                     f"{m['no libmvec'] / m['real']:.2f}", f"{m['no math'] / m['real']:.2f}",
                     ", ".join(calls) or "none", " / ".join(str(bad[k]) for k in KINDS)])
        print(f"[{stage} ops] " + ", ".join(f"{k} {m[k] / m['plain']:.2f}x" for k in KINDS),
              file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    main()
