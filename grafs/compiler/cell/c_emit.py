"""C source for the relaxed cell on CPUs: the cell plan of grafs.compiler.cell.plan in a C
dialect where every value is a GCC vector of ``L`` fp32 lanes (16 with AVX-512, 8 with AVX2, 4
with SSE4.1: the widest the CPU runs).

The kernels loop over ``x`` ``L`` elements at a time and run the same straight-line statements
as the Triton kernels: transcendental functions are glibc's libmvec vector variants (``expf``
as ``_ZGVdN8v_expf``: a few ulp, special values handled), selects and NaN-propagating
max/min are lane masks, and the per-op w/γ gradients accumulate in vector partial sums flushed
to float64 every ``FLUSH`` vectors (so long reductions do not lose float32 precision). Only
standard C and GCC vector extensions are used: a build is one ``cc`` call of about a second
(grafs.compiler.cell.c_build), not an Inductor compile.
"""
from __future__ import annotations

from grafs.compiler.cell.plan import CellPlan
from grafs.compiler.emit import Dialect
from grafs.compiler.reverse import EXPM1, SELECT
from grafs.grammar import expr as E
from grafs.ops import SQRT2
from grafs.compiler.cell.c_spellings import SPELLINGS

__all__ = ["C", "CDialect", "ISAS", "LIBMVEC_UNARY", "cell_c_source", "cell_c_one_pass_source"]

# the AVX-512 helpers: a 16-lane value as two 8-lane halves
_HALVES = """\
typedef float V8 __attribute__((vector_size(32)));
typedef int VI8 __attribute__((vector_size(32)));
#define lo8(a) __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7)
#define hi8(a) __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15)
#define join8(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
static inline V sqrt16(V a) { return join8(__builtin_ia32_sqrtps256(lo8(a)), __builtin_ia32_sqrtps256(hi8(a))); }
#define round16(a, mode) join8(__builtin_ia32_roundps256(lo8(a), mode), __builtin_ia32_roundps256(hi8(a), mode))
"""
# per instruction set (x86-64 vector ABI): lanes, libmvec's name prefix, the flags, and how
# sqrt, "any lane set" and round-to-nearest are spelled, with the helpers they need. AVX-512
# takes them on its two 256-bit halves (AVX2's builtins): <immintrin.h> would add 0.25-0.35 s
# of parsing to every build.
ISAS = {
    "avx512": {"lanes": 16, "prefix": "_ZGVeN16", "flags": ["-mavx512f", "-mavx512dq", "-mfma"],
               "macro": "__AVX512F__", "helpers": _HALVES,
               "sqrt": "sqrt16", "any": "__builtin_ia32_movmskps256((V8)((VI8)lo8((V)m) | (VI8)hi8((V)m)))",
               "round": "round16"},
    "avx2": {"lanes": 8, "prefix": "_ZGVdN8", "flags": ["-mavx2", "-mfma"], "macro": "__AVX2__", "helpers": "",
             "sqrt": "__builtin_ia32_sqrtps256", "any": "__builtin_ia32_movmskps256((V)m)",
             "round": "__builtin_ia32_roundps256"},
    "sse4": {"lanes": 4, "prefix": "_ZGVbN4", "flags": ["-msse4.1"], "macro": "__SSE4_1__", "helpers": "",
             "sqrt": "__builtin_ia32_sqrtps", "any": "__builtin_ia32_movmskps((V)m)",
             "round": "__builtin_ia32_roundps"},
}
#: the one-argument libmvec functions the prelude declares (and pow, with two)
LIBMVEC_UNARY = ("exp", "log", "sin", "cos", "sinh", "cosh", "tanh", "asinh", "atan", "erf",
                 "expm1", "log1p")
FLUSH = 64   # vectors between flushes of the float32 partial sums into float64


class CDialect(Dialect):
    """C with GCC vector extensions: ``V`` values, ``K(c)`` constants, ``sel`` selects."""
    name = "C"
    field = "c"
    spellings = SPELLINGS
    comment = "//"
    internal = {SELECT: "sel({0} > K(0), {1}, {2})", EXPM1: "vexpm1({0})"}

    def expand(self, n):
        # silu and gelu through their σ / erf nodes, which their partials (and a sigmoid or erf
        # op on the same input) share
        a = n.args
        if n.op == "silu":
            return E.Expr("mul", (a[0], E.Expr("sigmoid", (a[0],))))
        if n.op == "gelu":
            erf = E.Expr("erf", (E.Expr("mul", (a[0], E.const(1.0 / SQRT2))),))
            return E.Expr("mul", (E.Expr("mul", (E.const(0.5), a[0])),
                                  E.Expr("add", (E.const(1.0), erf))))
        return None

    def partial_form(self, e):
        # in partials, σ(−u) as 1 − σ(u) (what torch's sigmoid backward computes): an exp and a
        # division fewer per sigmoid partial; values keep σ(−u), exact in the tail
        def form(n: E.Expr, args: list[E.Expr]) -> E.Expr:
            if n.op == "sigmoid" and args[0].op == "neg":
                return E.Expr("sub", (E.const(1.0), E.Expr("sigmoid", (args[0].args[0],))))
            return E.with_args(n, args)
        return E.rewrite(e, form)

    def lit(self, v: float) -> str:
        r = repr(float(v))
        if r in ("inf", "-inf", "nan"):
            r = {"inf": "__builtin_inff()", "-inf": "(-__builtin_inff())",
                 "nan": "__builtin_nanf(\"\")"}[r]
        return f"K({r})"

    def sqrt(self, r):
        return f"vsqrt({r})"

    def full(self, lit):
        return lit

    def to_block(self, ref):
        return ref

    def assign(self, name, expr, declare):
        return f"{'V ' if declare else ''}{name} = {expr};"

    def if_open(self, cond):
        return f"if ({cond}) {{"

    def if_close(self):
        return "}"

    def load(self, ptr, index):
        return f"K({ptr}[{index}])"

    def is_active(self, k):
        return f"mask_ptr[{k}]"

    def any_active(self, ks):
        return " | ".join(f"mask_ptr[{k}]" for k in ks)

    def store_partial(self, col, r):
        return f"part[{col}] += sel(valid, {r}, K(0));"

    def lane_mask(self, k):
        return f"(V)((VI){{0}} - (mask_ptr[{k}] != 0))"

    def on(self, masks, r):
        m = masks[0]
        for other in masks[1:]:
            m = f"vor({m}, {other})"
        return f"keep({m}, {r})"


C = CDialect()


def prelude(isa: str) -> str:
    spec = ISAS[isa]
    L, pre = spec["lanes"], spec["prefix"]
    # libmvec's exp, sinh, cosh and expm1 take a per-lane scalar path for arguments beyond
    # ±88 (overflow/underflow), ~10x slower: the wrappers below keep such lanes off it
    wrapped = ("exp", "sinh", "cosh", "expm1", "tanh", "asinh")
    decls = "\n".join(f"V {pre}v_{f}f(V);\n#define {'mv_' if f in wrapped else 'v'}{f} {pre}v_{f}f"
                      for f in LIBMVEC_UNARY)
    iota = ", ".join(str(i) for i in range(L))
    # a source built with another set's flags must not compile (AVX-512 code with AVX2 flags
    # compiles and passes 16-lane vectors to libmvec in the wrong registers)
    return f"""\
#ifndef {spec["macro"]}
#error "this C cell source is for {isa}: build it with {' '.join(spec['flags'])}"
#endif
#include <string.h>
#define L {L}
typedef float V __attribute__((vector_size({4 * L})));
typedef int VI __attribute__((vector_size({4 * L})));
{spec["helpers"]}#define K(c) ((float)(c) - (V){{0}})
{decls}
V {pre}vv_powf(V, V);
#define vpow {pre}vv_powf
#define vsqrt {spec["sqrt"]}
static inline V sel(VI m, V a, V b) {{ return (V)((m & (VI)a) | (~m & (VI)b)); }}
/* a slot's contribution where its mask lanes are set, else +0 */
static inline V keep(V m, V a) {{ return (V)((VI)m & (VI)a); }}
static inline V vor(V a, V b) {{ return (V)((VI)a | (VI)b); }}
static inline V vabs(V a) {{ return (V)((VI)a & ((VI){{0}} + 0x7fffffff)); }}
static inline V vmax(V a, V b) {{ return sel((a > b) | (a != a), a, b); }}
static inline V vmin(V a, V b) {{ return sel((a < b) | (a != a), a, b); }}
static inline int any(VI m) {{ return {spec["any"]}; }}
/* e^x for x in [-87, 88], inline (no call, so live values stay in registers; exp is the
   commonest function of the cell): x = n ln2 + r with ln2 in two parts (Cody-Waite), e^r by
   Cephes' degree-6 polynomial, 2^n through the exponent bits. Within 1 ulp of float64. */
static inline V iexp(V x) {{
    V n = {spec["round"]}(x * K(1.44269504088896341), 0x08);
    V r = (x - n * K(0.693359375)) - n * K(-2.12194440e-4);
    V p = K(1.9875691500E-4);
    p = p * r + K(1.3981999507E-3);
    p = p * r + K(8.3334519073E-3);
    p = p * r + K(4.1665795894E-2);
    p = p * r + K(1.6666665459E-1);
    p = p * r + K(5.0000001201E-1);
    p = p * r * r + r + K(1);
    return p * (V)((__builtin_convertvector(n, VI) + 127) << 23);
}}
/* |x| > 80 somewhere: e^x as (e^(x/2))^2 there (same overflow to inf and underflow to 0) */
static inline V vexp(V x) {{
    VI big = vabs(x) > K(80);
    if (!any(big)) return iexp(x);
    V e = iexp(sel(big, vmin(vmax(x, K(-170)), K(170)) * K(0.5), x));
    return sel(big, e * e, e);
}}
static inline V vexpm1(V x) {{
    VI big = vabs(x) > K(80);
    if (!any(big)) return mv_expm1(x);
    return sel(x > K(80), vexp(x), sel(x < K(-80), K(-1), mv_expm1(sel(big, K(0), x))));
}}
static inline V copysgn(V m, V x) {{
    return (V)(((VI)m & ((VI){{0}} + 0x7fffffff)) | ((VI)x & ((VI){{0}} + (int)0x80000000)));
}}
/* tanh inline (Cephes tanhf): an odd polynomial below 0.625, 1 - 2/(e^(2|x|) + 1) above */
static inline V vtanh(V x) {{
    V a = vabs(x), z = x * x;
    V p = ((((K(-5.70498872745E-3) * z + K(2.06390887954E-2)) * z - K(5.37397155531E-2)) * z
            + K(1.33314422036E-1)) * z - K(3.33332819422E-1)) * z * x + x;
    V big = copysgn(K(1) - K(2) / (vexp(a + a) + K(1)), x);
    return sel(a < K(0.625), copysgn(p, x), big);   /* copysgn: tanh(-0) = -0 */
}}
/* asinh inline (Cephes asinhf): an odd polynomial below 0.5, log(|x| + sqrt(x^2 + 1)) above,
   log(|x|) + ln 2 beyond 1500 (where x^2 + 1 is x^2) */
static inline V vasinh(V x) {{
    V a = vabs(x), z = x * x;
    V p = (((K(2.0122003309E-2) * z - K(4.2699340972E-2)) * z + K(7.4847586088E-2)) * z
           - K(1.6666288134E-1)) * z * x + x;
    VI huge = a > K(1500);
    V l = vlog(sel(huge, a, a + vsqrt(sel(huge, K(0), z) + K(1)))) + sel(huge, K(0.6931471805599453), K(0));
    return copysgn(sel(a < K(0.5), p, l), x);
}}
/* |x| > 80: cosh(x) = (e^(|x|/2) / 2) e^(|x|/2), sinh(x) the same with x's sign */
static inline V half_exp_abs(V x) {{
    V e = iexp(vmin(vabs(x), K(170)) * K(0.5));
    return (e * K(0.5)) * e;
}}
static inline V vcosh(V x) {{
    VI big = vabs(x) > K(80);
    if (!any(big)) return mv_cosh(x);
    return sel(big, half_exp_abs(x), mv_cosh(sel(big, K(0), x)));
}}
static inline V vsinh(V x) {{
    VI big = vabs(x) > K(80);
    if (!any(big)) return mv_sinh(x);
    V c = half_exp_abs(x);
    c = (V)((VI)c | ((VI)x & ((VI){{0}} + (int)0x80000000)));
    return sel(big, c, mv_sinh(sel(big, K(0), x)));
}}
static inline V vsigmoid(V a) {{ return K(1) / (K(1) + vexp(-a)); }}
static inline V vsoftplus(V a) {{ return sel(a > K(20), a, vlog1p(vexp(a))); }}
static const VI IOTA = {{{iota}}};

/* load n (<= L) floats, zero-padding the rest of the vector */
static inline V load(const float *p, long n) {{
    V v = K(0);
    memcpy(&v, p, (n < L ? n : L) * sizeof(float));
    return v;
}}
static inline void store(float *p, V v, long n) {{ memcpy(p, &v, (n < L ? n : L) * sizeof(float)); }}
"""


def _indent(lines: list[str], n: int) -> str:
    return "\n".join(" " * n + ln for ln in lines)


def _in_comment(text: str) -> str:
    return " ".join(text.split()).replace("*/", "* /")


def cell_c_source(plan: CellPlan, isa: str, text: str) -> str:
    """The C file of one cell plan: ``grafs_cell_fwd(x, w, g, mask, y, n)`` and
    ``grafs_cell_bwd(x, w, g, mask, gy, gx, part, n, wg)`` (``part``: float64 partial sums,
    one per w slot then per γ column, added to)."""
    if plan.d is not C:
        raise ValueError("cell_c_source needs a CellPlan built with the C dialect")
    fwd, y = plan.forward_statements(indent="")
    pro_fwd = plan.prologue_fwd or []
    bwd, ax = plan.backward_statements(indent="")
    pro_bwd = plan.prologue_bwd or []
    NC = plan.n_partials
    return f"""\
/* generated by grafs (relaxed cell, C {isa}) from: {_in_comment(text)} */
{prelude(isa)}
void grafs_cell_fwd(const float *restrict X, const float *restrict w_ptr,
                    const float *restrict g_ptr, const signed char *restrict mask_ptr,
                    float *restrict Y, long n) {{
    (void)g_ptr;
{_indent(pro_fwd, 4)}
    for (long i = 0; i < n; i += L) {{
        V x = load(X + i, n - i);
{_indent(fwd, 8)}
        store(Y + i, {y}, n - i);
    }}
}}

#define NC {NC}
static void flush(V *part, double *restrict out) {{
    for (int c = 0; c < NC; c++) {{
        double s = 0.0;
        for (int l = 0; l < L; l++) s += part[c][l];
        out[c] += s;
        part[c] = K(0);
    }}
}}

void grafs_cell_bwd(const float *restrict X, const float *restrict w_ptr,
                    const float *restrict g_ptr, const signed char *restrict mask_ptr,
                    const float *restrict GY, float *restrict GX, double *restrict PART,
                    long n, int WG) {{
    (void)g_ptr;
    V part[NC];
    for (int c = 0; c < NC; c++) part[c] = K(0);
    int since = 0;
{_indent(pro_bwd, 4)}
    for (long i = 0; i < n; i += L) {{
        V x = load(X + i, n - i);
        V gy = load(GY + i, n - i);
        VI valid = IOTA < ((VI){{0}} + (int)(n - i < L ? n - i : L));
        (void)valid;
{_indent(bwd, 8)}
        store(GX + i, {ax}, n - i);
        if (WG && ++since == {FLUSH}) {{
            flush(part, PART);
            since = 0;
        }}
    }}
    if (WG) flush(part, PART);
}}
"""


def cell_c_one_pass_source(plan: CellPlan, isa: str, text: str) -> str:
    """The C file of a weight call's one-pass kernel, ``grafs_cell_fwd_dx(x, w, g, mask, y,
    d, n)``: y and dy/dx (a library of its own, built with :func:`cell_c_source`'s)."""
    if plan.d is not C:
        raise ValueError("cell_c_one_pass_source needs a CellPlan built with the C dialect")
    fdx, fdx_y, fdx_d = plan.forward_dx_statements(indent="")
    pro_fdx = plan.prologue_bwd or []
    NC = plan.n_partials
    return f"""\
/* generated by grafs (relaxed cell, C {isa}, a weight call in one pass) from: {_in_comment(text)} */
{prelude(isa)}
#define NC {NC}
/* a weight call (w and g frozen): the output and dy/dx in one pass (instead of a forward and
   a backward that recomputes it): the backward's body, whose adjoints start from 1 and meet
   gy only at the end, so gy * D is grafs_cell_bwd's GX to the bit */
void grafs_cell_fwd_dx(const float *restrict X, const float *restrict w_ptr,
                       const float *restrict g_ptr, const signed char *restrict mask_ptr,
                       float *restrict Y, float *restrict D, long n) {{
    (void)g_ptr;
    enum {{ WG = 0 }};
    V part[NC];     /* written only under WG */
    (void)part;
{_indent(pro_fdx, 4)}
    for (long i = 0; i < n; i += L) {{
        V x = load(X + i, n - i);
        V gy = K(1);    /* read only under WG */
        (void)gy;
        VI valid = IOTA < ((VI){{0}} + (int)(n - i < L ? n - i : L));
        (void)valid;
{_indent(fdx, 8)}
        store(Y + i, {fdx_y}, n - i);
        store(D + i, {fdx_d}, n - i);
    }}
}}
"""
