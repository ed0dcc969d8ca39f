"""The relaxed cell as generated C kernels on the CPU: build, cache, load, call.

:class:`CCell` is the CPU counterpart of grafs.compiler.triton.backend.TritonCell: the same cell
plan (grafs.compiler.cell.plan), written in C with SIMD vectors (grafs.compiler.cell.c_emit), built
with the system C compiler into a shared library and called through ctypes. One call per
forward and one per backward, whatever the number of ops; autograd saves only x, w, γ and the
mask (the backward recomputes), or, for a weight call on fp32 x (α and γ frozen), one call
computing y and dy/dx, saved in x's place (a second library, compiled beside the first); the
work is split over torch's intra-op threads (ctypes releases the GIL).

Needs x86-64 Linux, a C compiler (``$CC``, else ``cc``) and glibc's libmvec (glibc ≥ 2.35 for
every function the ops use). :func:`available` says whether this machine has them (and why
not); ``RelaxedCell(mode="auto")`` uses the lean eager path where it does not. Libraries are
cached by source hash in the ``c`` folder of grafs' cache (grafs.files.cache_dir), so a search
builds each active set once per machine.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from grafs import files
from grafs.compiler.cell.c_emit import C, ISAS, cell_c_one_pass_source, cell_c_source
from grafs.compiler.cell.plan import CellPlan
from grafs.errors import CompileError

__all__ = ["available", "unavailable_reason", "CCell", "CCellKernels", "cache_dir"]

_LOCK = threading.Lock()
_LIBS: dict[str, ctypes.CDLL] = {}
_PTR, _LONG, _INT = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
# a thread gets at least PARALLEL_WORK / (compiled ops) elements, and at least PARALLEL_MIN
# (a hand-off to the pool costs tens of µs): at 110 ops a (128, 64) activation is split in two,
# at 6 ops only activations from about 2 × 44k elements are
PARALLEL_WORK = 1 << 18
PARALLEL_MIN = 1 << 11


def cache_dir() -> Path:
    """Where the libraries are cached: grafs.files.cache_dir's ``c`` folder."""
    return files.cache_dir("c")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _isa() -> str | None:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    words = set(flags.split())
    if {"avx2", "fma"} <= words:
        return "avx2"
    return "sse4" if "sse4_1" in words else None


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None where the C cell can run here, else why not (one line)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the C cell needs x86-64 Linux (this is {sys.platform} {platform.machine()})"
    if _compiler() is None:
        return "no C compiler found (set $CC or install gcc)"
    if not ctypes.util.find_library("mvec"):
        return "glibc's libmvec (vector math) was not found"
    if _isa() is None:
        return "the CPU has neither AVX2+FMA nor SSE4.1"
    try:    # the smallest kernel that uses libmvec, built and run once per process
        lib = _build("#include <stddef.h>\n" + _probe_source(_isa()))
        out = (ctypes.c_float * 1)()
        lib.grafs_probe(out)
        if abs(out[0] - 2.7182817) > 1e-5:
            return f"the C probe kernel computed exp(1) = {out[0]}"
    except (CompileError, OSError) as err:   # OSError: cache dir not writable, dlopen failed
        return str(err).splitlines()[0]
    return None


def available() -> bool:
    return unavailable_reason() is None


def _probe_source(isa: str) -> str:
    from grafs.compiler.cell.c_emit import prelude
    return prelude(isa) + "void grafs_probe(float *o) { V v = vexp(vasinh(vpow(K(1), K(2))) * K(0) + K(1)); o[0] = v[0]; }\n"


def _flags(isa: str) -> list[str]:
    # --no-undefined: a libmvec without one of the functions (glibc < 2.35) fails the build,
    # not the dlopen
    # -ffp-contract=off: no fused multiply-adds the source does not write, so a build computes
    # every value as the build for a subset of its active set does (bit for bit; a search
    # switches builds whenever the next one is ready)
    # -fira-region=one: register allocation over the whole function at once, which is most of
    # the compile time of the cell's long straight-line loop body: a build compiles in 20% less
    # time (0.48 s against 0.60 s at 110 ops here), for the same code speed and the same bits
    return ["-O1", "-fira-region=one", "-ffp-contract=off", "-shared", "-fPIC", "-w",
            "-Wl,--no-undefined", *ISAS[isa]["flags"]]


@functools.lru_cache(maxsize=None)
def _compiler_version(cc: str) -> str:
    try:
        r = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return (r.stdout.splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(source: str) -> ctypes.CDLL:
    """Compile ``source`` (once per machine: cached by its hash) and load it. Thread-safe; the
    compile holds only its own key's lock, so a build in the background never blocks calls."""
    isa = _isa() or "sse4"
    cc = _compiler()
    if cc is None:
        raise CompileError("the C cell needs a C compiler (set $CC or install gcc)")
    key = hashlib.sha256("\0".join([source, cc, _compiler_version(cc), *_flags(isa)]).encode()
                         ).hexdigest()[:24]
    with _LOCK:
        lib = _LIBS.get(key)
        if lib is not None:
            return lib
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _LOCK:
            lib = _LIBS.get(key)
        if lib is not None:
            return lib
        path = cache_dir() / f"grafs_cell_{key}.so"
        lib = _load(path, key) if path.exists() else None   # (None: empty, truncated, corrupt,
        if lib is None:                                      # another library: built again)
            # the marker symbol tells this build from any other shared library at that path
            lib = _compile(f"{source}\nconst int grafs_build_{key} = 1;\n", cc, isa, path, key)
        with _LOCK:
            _LIBS[key] = lib
        return lib


_RETRY = ("set GRAFS_CACHE_DIR to another directory, or use cell_mode='lean' (the C cell is "
          "an optimisation)")


def _load(path: Path, key: str) -> ctypes.CDLL | None:
    """The library at ``path``, or None when it is not a whole, loadable build of ``key`` (a
    truncated one would load and then fault on first use: its size is checked first)."""
    try:
        if not _complete_elf(path):
            return None
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    return lib if hasattr(lib, f"grafs_build_{key}") else None


def _complete_elf(path: Path) -> bool:
    """Whether ``path`` is a 64-bit little-endian ELF file holding every segment it lists."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        if phentsize < 56 or phoff + phentsize * phnum > size:
            return False
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        _, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if offset + filesz > size:
            return False
    return True


def _compile(source: str, cc: str, isa: str, path: Path, key: str) -> ctypes.CDLL:
    """Build ``source`` into ``path`` through temporary files beside it (removed whatever
    happens; a killed build's are removed by the next build of the same library) and load it
    (from its temporary name: a library this process loaded from ``path`` before, unusable,
    would be what the loader returns for that name)."""
    src, tmp = files.temp_path(path.with_suffix(".c")), files.temp_path(path)
    files.sweep_stale_temps(path.with_suffix(".c"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.sweep_stale_temps(path)
        src.write_text(source)
    except OSError as err:
        _unlink(src)
        raise CompileError(str(files.write_error(path, "the C cell library (its source)", err,
                                                 _RETRY))) from None
    try:
        try:    # (-x c: the source's name does not end in .c)
            r = subprocess.run([cc, *_flags(isa), "-x", "c", str(src), "-x", "none", "-o", str(tmp),
                                "-lmvec", "-lm"], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as err:
            raise CompileError(f"building the C cell took over 5 minutes ({cc})") from err
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines() or ["no output"]
            full = next((ln for ln in lines if "No space left" in ln or "Read-only" in ln), None)
            raise CompileError(f"building the C cell failed ({cc}, for {path}): {full or lines[0]}; "
                               + (f"{path.parent} must have room and be writable; " if full else "")
                               + _RETRY)
        lib = _load(tmp, key)
        if lib is None:
            raise CompileError(f"the C cell library built for {path} cannot be loaded; {_RETRY}")
        os.replace(tmp, path)     # atomic: other processes see all or nothing
        return lib
    except OSError as err:
        raise CompileError(str(files.write_error(path, "the C cell library", err, _RETRY))) from None
    finally:
        _unlink(src)
        _unlink(tmp)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


_KEY_LOCKS: dict[str, threading.Lock] = {}
_EXECUTORS: dict[tuple[str, int], ThreadPoolExecutor] = {}


def _executor(name: str, workers: int) -> ThreadPoolExecutor:
    """This process's thread pool ``name`` with at least ``workers`` threads (a forked child
    gets its own: the parent's threads do not exist there)."""
    with _LOCK:
        key = (name, os.getpid())
        ex = _EXECUTORS.get(key)
        if ex is None or ex._max_workers < workers:
            ex = _EXECUTORS[key] = ThreadPoolExecutor(max_workers=workers,
                                                       thread_name_prefix=f"grafs-{name}")
        return ex


def _builder() -> ThreadPoolExecutor:
    """The one background build thread (builds queue: one compile at a time)."""
    return _executor("c-build", 1)


def _one_pass_builder() -> ThreadPoolExecutor:
    """The thread that compiles a build's one-pass library beside its main one."""
    return _executor("c-build-one-pass", 1)


def _pool() -> ThreadPoolExecutor:
    """The kernel threads, as many as torch's intra-op threads (grown when that grows)."""
    return _executor("c", torch.get_num_threads())


def _spans(n: int, n_ops: int) -> list[tuple[int, int]]:
    """The element ranges of one call's threads."""
    least = max(PARALLEL_MIN, PARALLEL_WORK // max(n_ops, 1))
    if n < 2 * least:
        return [(0, n)]
    t = max(1, min(torch.get_num_threads(), n // least))
    step = -(-n // t)
    step += (-step) % 16          # whole vectors per thread
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _run(spans, fn) -> None:
    """``fn(a, b)`` for every span, the first on this thread, the others on the pool; returns
    only once all have finished, even when interrupted (Ctrl-C): the kernels write into
    tensors this call's caller frees on the way out."""
    if len(spans) == 1:
        fn(*spans[0])
        return
    futs = [_pool().submit(fn, a, b) for a, b in spans[1:]]
    try:
        fn(*spans[0])
    finally:
        interrupted = None
        for f in futs:
            while True:
                try:
                    f.exception()
                    break
                except KeyboardInterrupt as e:   # keep waiting: the threads are still writing
                    interrupted = e
        if interrupted is not None:
            raise interrupted
    for f in futs:
        f.result()


class CCellKernels:
    """The compiled forward/backward pair of one cell plan: straight-line code for the active
    set it was built for, each slot's contributions selected by the mask (so it serves every
    subset of that set, bit for bit as that subset's own build)."""

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        # unmasked: compiled for exactly the active set (a build is about a second), so the
        # backward shares every value with its forward recompute
        self.plan = plan = CellPlan(space, slot_of, gamma_of, clip, active, C, masked=False)
        self.K = plan.K
        self.NC = max(plan.K + len(plan.gcols), 1)
        self.n_gamma = 1 + max((j for js in gamma_of.values() for j in js), default=-1)
        self.gcols = torch.tensor(plan.gcols, dtype=torch.long)
        self.n_code = n_code = sum(len(v) for v in plan.slots.values())
        self._text = f"relaxed {space.template} with {plan.K} slots ({n_code} compiled), clip={clip}"
        self._isa = _isa() or "sse4"
        self._source: str | None = None
        self._source_lock = threading.Lock()   # the emitters write into the shared plan
        self._lib: ctypes.CDLL | None = None
        self._future = None
        self._one_pass_source: str | None = None
        self._one_pass_lib: ctypes.CDLL | None = None

    @property
    def source(self) -> str:
        """The C source, generated on first use: a background build generates it in the build
        thread too (about 30 ms of Python per active set at 110 ops, off the search's thread)."""
        if self._source is None:
            with self._source_lock:
                if self._source is None:
                    self._source = cell_c_source(self.plan, self._isa, self._text)
        return self._source

    @property
    def one_pass_source(self) -> str:
        """The C source of the weight call's one-pass kernel (:meth:`forward_dx`)."""
        if self._one_pass_source is None:
            with self._source_lock:
                if self._one_pass_source is None:
                    self._one_pass_source = cell_c_one_pass_source(self.plan, self._isa, self._text)
        return self._one_pass_source

    def _generate_and_build(self, side_by_side: bool) -> tuple[ctypes.CDLL, ctypes.CDLL]:
        """Both libraries of this plan: built together, so which kernels a call takes never
        depends on timing (a checkpointed forward and its recomputation take the same).
        ``side_by_side``: in two compiler processes (a caller is waiting: the one-pass library
        is the smaller, so the build takes about as long as the cell's alone on two cores);
        else one after the other (a background build: one core, as the search runs beside)."""
        if not side_by_side:
            return _build(self.source), _build(self.one_pass_source)
        other = _one_pass_builder().submit(lambda: _build(self.one_pass_source))
        try:
            main = _build(self.source)
        finally:
            one_pass = other.result()
        return main, one_pass

    def start_build(self, side_by_side: bool = False) -> None:
        """Generate and compile in the background thread (the next :meth:`lib` waits);
        ``side_by_side``: the two libraries in two compiler processes (a search will wait for
        this build: its first)."""
        if self._lib is None and self._future is None:
            self._future = _builder().submit(self._generate_and_build, side_by_side)

    def ready(self) -> bool:
        """Loaded, or a background build has finished (successfully or not)."""
        return self._lib is not None or (self._future is not None and self._future.done())

    def lib(self) -> ctypes.CDLL:
        if self._lib is None:
            # a background build's error is raised here, on the thread that needs the library
            lib, one_pass = (self._future.result() if self._future is not None
                             else self._generate_and_build(True))
            lib.grafs_cell_fwd.argtypes = [_PTR] * 5 + [_LONG]
            lib.grafs_cell_fwd.restype = None
            lib.grafs_cell_bwd.argtypes = [_PTR] * 7 + [_LONG, _INT]
            lib.grafs_cell_bwd.restype = None
            one_pass.grafs_cell_fwd_dx.argtypes = [_PTR] * 6 + [_LONG]
            one_pass.grafs_cell_fwd_dx.restype = None
            self._one_pass_lib = one_pass
            self._lib = lib
        return self._lib

    def one_pass(self) -> ctypes.CDLL:
        """The weight call's one-pass library (built with :meth:`lib`'s)."""
        self.lib()
        return self._one_pass_lib

    def _check(self, x, w, g, mask):
        if x.device.type != "cpu":
            raise CompileError(f"the C cell runs on the CPU, got a tensor on {x.device}")
        if w.numel() != self.K or mask.numel() != self.K:
            raise CompileError(f"the relaxed cell has {self.K} op slots; got {w.numel()} weights and "
                               f"a mask of {mask.numel()}")
        if g.numel() < self.n_gamma:
            raise CompileError(f"the relaxed cell uses {self.n_gamma} gammas; got {g.numel()}")

    @staticmethod
    def _f32(t: torch.Tensor) -> torch.Tensor:
        """``t`` as a contiguous fp32 CPU tensor (itself when it already is: the common case,
        so the per-call path dispatches nothing)."""
        if t.dtype != torch.float32:
            t = t.float()
        return t if t.is_contiguous() else t.contiguous()

    def _ptrs(self, w, g, mask):
        w, g = self._f32(w), self._f32(g) if g.numel() else self._no_gamma
        m = mask if mask.dtype == torch.int8 else mask.to(torch.int8)
        m = m if m.is_contiguous() else m.contiguous()
        return (w, g, m), (w.data_ptr(), g.data_ptr(), m.data_ptr())

    _no_gamma = torch.zeros(1, dtype=torch.float32)
    _no_part = torch.zeros(1, dtype=torch.float64)

    def forward(self, x, w, g, mask, block=None):
        self._check(x, w, g, mask)
        lib = self.lib()
        xc = self._f32(x)
        y = torch.empty(xc.shape, dtype=torch.float32)
        keep, p = self._ptrs(w, g, mask)
        xp, yp, n = xc.data_ptr(), y.data_ptr(), xc.numel()
        spans = _spans(n, self.n_code)
        if len(spans) == 1:
            lib.grafs_cell_fwd(xp, *p, yp, n)
        else:
            _run(spans, lambda a, b: lib.grafs_cell_fwd(xp + 4 * a, *p, yp + 4 * a, b - a))
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def forward_dx(self, x, w, g, mask, block=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A weight call's forward (w and g frozen): y and dy/dx in one pass over x, so its
        backward is ``gy * dy/dx`` (the same memory as saving x): y is :meth:`forward`'s and
        ``gy * dy/dx`` :meth:`backward`'s ∂x, bit for bit."""
        self._check(x, w, g, mask)
        lib = self.one_pass()
        xc = self._f32(x)
        y = torch.empty(xc.shape, dtype=torch.float32)
        d = torch.empty(xc.shape, dtype=torch.float32)
        keep, p = self._ptrs(w, g, mask)
        xp, yp, dp, n = xc.data_ptr(), y.data_ptr(), d.data_ptr(), xc.numel()
        spans = _spans(n, 2 * self.n_code)
        if len(spans) == 1:
            lib.grafs_cell_fwd_dx(xp, *p, yp, dp, n)
        else:
            _run(spans, lambda a, b: lib.grafs_cell_fwd_dx(xp + 4 * a, *p, yp + 4 * a, dp + 4 * a,
                                                           b - a))
        return (y if x.dtype == torch.float32 else y.to(x.dtype)), d

    def backward(self, x, w, g, mask, gy, block=None, need_wg: bool = True):
        lib = self.lib()
        xc, gyc = self._f32(x), self._f32(gy)
        gx = torch.empty(xc.shape, dtype=torch.float32)
        keep, p = self._ptrs(w, g, mask)
        n, NC, wg = xc.numel(), self.NC, int(bool(need_wg))
        spans = _spans(n, self.n_code)
        # (a weight call's kernel writes no partial sums)
        part = torch.zeros(len(spans) * NC, dtype=torch.float64) if need_wg else self._no_part
        xp, gyp, gxp, pp = xc.data_ptr(), gyc.data_ptr(), gx.data_ptr(), part.data_ptr()
        if len(spans) == 1:
            lib.grafs_cell_bwd(xp, *p, gyp, gxp, pp, n, wg)
        else:
            def run(a, b):
                i = a // (spans[0][1] - spans[0][0])       # the span's row of partial sums
                lib.grafs_cell_bwd(xp + 4 * a, *p, gyp + 4 * a, gxp + 4 * a, pp + 8 * NC * i,
                                   b - a, wg)
            _run(spans, run)
        gx = gx if x.dtype == torch.float32 else gx.to(x.dtype)
        if not need_wg:
            return gx, None, None
        sums = part.view(len(spans), NC).sum(0) if len(spans) > 1 else part
        gw = sums[: self.K].to(w.dtype)
        gg = torch.zeros(g.shape, dtype=torch.float64)
        if len(self.plan.gcols):
            gg.index_add_(0, self.gcols, sums[self.K:self.K + len(self.plan.gcols)])
        return gx, gw, gg.to(g.dtype)


class CCell:
    """``CCell(space, slot_of, gamma_of, clip, active=None)(x, w, g, mask) -> y``,
    differentiable w.r.t. x, w and g (as :class:`grafs.compiler.triton.backend.TritonCell`)."""

    def __init__(self, space, slot_of, gamma_of, clip: bool, active=None):
        self.space = space
        self.active = active
        self._k = CCellKernels(space, dict(slot_of), {k: list(v) for k, v in gamma_of.items()},
                               bool(clip), active)
        self.num_slots = self._k.K

    @property
    def source(self) -> str:
        return self._k.source

    def build(self) -> "CCell":
        self._k.lib()
        return self


    def start_build(self, side_by_side: bool = False) -> None:
        self._k.start_build(side_by_side)

    def ready(self) -> bool:
        return self._k.ready()

    def __call__(self, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        from grafs.compiler.triton.autograd import CellFn, one_pass_call   # kernel-agnostic
        # (autocast needs no switching off: the kernels compute in fp32 whatever x's dtype)
        return CellFn.apply(x, w, g, mask, self._k, None, one_pass_call(x, w, g))

    def __repr__(self) -> str:
        return f"CCell({self.space.template!r}, {self.num_slots} slots)"
