"""The preludes of generated Triton kernel files: the GPU one, and the interpreter shims.

Triton's CPU interpreter (``TRITON_INTERPRET=1``) cannot call libdevice, so the interpreter
variant of a kernel file binds ``libdevice`` to float64 stand-ins built from ``tl`` builtins,
and ``tl`` to a thin wrapper that rewrites the few standard-library functions the kernels use
(``tl.sum``, ``tl.zeros``, ``tl.sigmoid``) from builtins: with that, the interpreter works
whether or not ``TRITON_INTERPRET`` was set when ``triton`` was first imported (Triton itself
decides it at import/decoration time). The kernel bodies are the same in both variants.
"""
from __future__ import annotations

__all__ = ["PRELUDE_GPU", "PRELUDE_INTERP", "prelude"]

PRELUDE_GPU = """\
import triton
import triton.language as tl
from triton.language.extra import libdevice
"""

PRELUDE_INTERP = '''\
import triton
import triton.language as _tl


class _Lang:
    """triton.language for the Triton interpreter: everything forwards to it, except the few
    standard-library (@jit) functions the kernels use, rebuilt from builtins so they run whether
    or not TRITON_INTERPRET was set when triton was imported."""

    def __getattr__(self, name):
        return getattr(_tl, name)

    @staticmethod
    def sum(x, axis=None):
        return _tl.reduce(x, axis, _tl.standard._sum_combine)

    @staticmethod
    def zeros(shape, dtype):
        return _tl.full(shape, 0, dtype)

    @staticmethod
    def zeros_like(x):
        return _tl.full(x.shape, 0, x.dtype)

    @staticmethod
    def sigmoid(x):
        return 1.0 / (1.0 + _tl.exp(-x))


tl = _Lang()


def _f64(v):
    return v.to(_tl.float64) if isinstance(v, _tl.tensor) else v


def _z64(v):
    return _tl.full(v.shape, 0, _tl.float64) if isinstance(v, _tl.tensor) else 0.0


class libdevice:
    """Stand-ins for the libdevice functions (the interpreter has no extern calls), from tl
    builtins, evaluated in float64 and rounded to float32."""

    @staticmethod
    def expm1(x):
        z = _f64(x)
        small = z * (1.0 + z * (0.5 + z * 0.16666666666666666))
        return _tl.where(_tl.abs(z) < 1e-5, small, _tl.exp(z) - 1.0).to(_tl.float32)

    @staticmethod
    def log1p(x):
        z = _f64(x)
        small = z * (1.0 - z * (0.5 - z * 0.3333333333333333))
        return _tl.where(_tl.abs(z) < 1e-5, small, _tl.log(1.0 + z)).to(_tl.float32)

    @staticmethod
    def sinh(x):
        z = _f64(x)
        return _tl.where(_tl.abs(z) < 1e-5, z, 0.5 * (_tl.exp(z) - _tl.exp(-z))).to(_tl.float32)

    @staticmethod
    def cosh(x):
        z = _f64(x)
        return (0.5 * (_tl.exp(z) + _tl.exp(-z))).to(_tl.float32)

    @staticmethod
    def tanh(x):
        z = _f64(x)
        r = 1.0 - 2.0 / (_tl.exp(2.0 * z) + 1.0)
        return _tl.where(_tl.abs(z) < 1e-5, z, r).to(_tl.float32)

    @staticmethod
    def asinh(x):
        z = _f64(x)
        a = _tl.abs(z)
        r = _tl.where(a < 1e-5, a, _tl.log(a + _tl.sqrt(a * a + 1.0)))
        return _tl.where(z < 0, -r, r).to(_tl.float32)

    @staticmethod
    def atan(x):
        z = _f64(x)
        a = _tl.abs(z)
        inv = a > 1.0
        t = _tl.where(inv, 1.0 / _tl.where(inv, a, 1.0), a)
        t = t / (1.0 + _tl.sqrt(1.0 + t * t))    # atan(t) = 2 atan(t / (1 + sqrt(1 + t^2)))
        t = t / (1.0 + _tl.sqrt(1.0 + t * t))    # |t| <= tan(pi/16)
        t2 = t * t
        s = t2 * 0.0
        for k in range(9, -1, -1):
            s = s * t2 + (1.0 if k % 2 == 0 else -1.0) / (2 * k + 1)
        r = 4.0 * t * s
        r = _tl.where(inv, 1.5707963267948966 - r, r)
        return _tl.where(z < 0, -r, r).to(_tl.float32)

    @staticmethod
    def pow(a, b):
        za = _f64(a) + _z64(b)
        zb = _f64(b) + _z64(a)
        r = _tl.exp(zb * _tl.log(_tl.abs(za)))
        fb = _tl.floor(zb)
        odd = (fb == zb) & (_tl.abs(fb - 2.0 * _tl.floor(fb * 0.5)) == 1.0)
        r = _tl.where((za < 0) & odd, -r, r)
        r = _tl.where((za < 0) & (fb != zb), float("nan"), r)
        return _tl.where(zb == 0, 1.0, r).to(_tl.float32)
'''


def prelude(interp: bool) -> str:
    """The imports a kernel file starts with: the interpreter shims or the GPU modules."""
    return PRELUDE_INTERP if interp else PRELUDE_GPU
