"""The C cell's libraries: whether this machine can build them, building, caching and
loading them, and the threads that build them and run their kernels.

The kernels and their autograd are grafs.compiler.cell.c_kernels. Needs x86-64 Linux, a C compiler (``$CC``, else ``cc``) and glibc's libmvec (glibc ≥ 2.35 for
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
from grafs.compiler.cell.c_emit import ISAS
from grafs.errors import CompileError

__all__ = ["available", "unavailable_reason", "cache_dir", "native_isa", "supported_isas",
           "no_isa_reason", "build_library",
           "builder", "one_pass_builder", "spans", "run_spans"]

_LOCK = threading.Lock()
_LIBS: dict[str, ctypes.CDLL] = {}
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


# what each instruction set of the C cell needs of the CPU (/proc/cpuinfo flags), widest first
CPU_FLAGS = {"avx512": {"avx512f", "avx512dq", "fma"}, "avx2": {"avx2", "fma"}, "sse4": {"sse4_1"}}
ISA_ENV = "GRAFS_C_ISA"     # pick a narrower one (benches compare them)


@functools.lru_cache(maxsize=None)
def supported_isas() -> tuple[str, ...]:
    """The C cell's instruction sets this CPU runs, widest first."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ()
    return tuple(isa for isa, need in CPU_FLAGS.items() if need <= words)


def native_isa() -> str | None:
    """The instruction set the C cell is built for: ``$GRAFS_C_ISA`` where it is set and this
    CPU runs it, else the widest this CPU runs and this compiler builds (the AVX-512 prelude
    needs ``__builtin_shufflevector``: GCC 12, clang), None: none (or ``$GRAFS_C_ISA`` is not
    one of them)."""
    isas = supported_isas()
    want = os.environ.get(ISA_ENV, "").strip().lower()
    if want:
        return want if want in isas else None
    for isa in isas[:-1]:   # the narrowest is taken untried: unavailable_reason says what fails
        if _probe_error(isa) is None:
            return isa
    return isas[-1] if isas else None


@functools.lru_cache(maxsize=None)
def _probe_error(isa: str) -> str | None:
    """Why the smallest kernel that uses libmvec does not build or run for ``isa``, or None
    (built and run once per process, the build cached like any other)."""
    try:
        lib = build_library("#include <stddef.h>\n" + _probe_source(isa), isa)
        out = (ctypes.c_float * 1)()
        lib.grafs_probe(out)
        if abs(out[0] - 2.7182817) > 1e-5:
            return f"the C probe kernel computed exp(1) = {out[0]}"
    except (CompileError, OSError) as err:   # OSError: cache dir not writable, dlopen failed
        return str(err).splitlines()[0]
    return None


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None where the C cell can run here, else why not (one line)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the C cell needs x86-64 Linux (this is {sys.platform} {platform.machine()})"
    if _compiler() is None:
        return "no C compiler found (set $CC or install gcc)"
    if not ctypes.util.find_library("mvec"):
        return "glibc's libmvec (vector math) was not found"
    if native_isa() is None:
        return no_isa_reason()
    return _probe_error(native_isa())


def no_isa_reason() -> str:
    """Why :func:`native_isa` is None (read now: ``$GRAFS_C_ISA`` may have changed)."""
    if os.environ.get(ISA_ENV):
        return (f"{ISA_ENV}={os.environ[ISA_ENV]!r} is not an instruction set this CPU runs "
                f"(it runs: {', '.join(supported_isas()) or 'none'}; accepted: "
                f"{', '.join(CPU_FLAGS)})")
    return "the CPU has neither AVX-512, AVX2+FMA nor SSE4.1"


def available() -> bool:
    return unavailable_reason() is None


def _probe_source(isa: str) -> str:
    """The probe kernel: e^1 through the prelude's helpers, plus 0 × every libmvec function
    the cell may call (with --no-undefined, a libmvec that lacks one, as glibc before 2.35
    lacks erf, atan and others, fails the probe, and ``auto`` takes the lean path, instead
    of failing the first cell build that needs it)."""
    from grafs.compiler.cell.c_emit import ISAS, LIBMVEC_UNARY, prelude
    pre = ISAS[isa]["prefix"]
    every = " + ".join([f"{pre}v_{f}f(K(1))" for f in LIBMVEC_UNARY] + [f"{pre}vv_powf(K(1), K(2))"])
    return (prelude(isa) + "void grafs_probe(float *o) { V v = vexp(vasinh(vpow(K(1), K(2))) * K(0) + K(1)) "
            f"+ ({every}) * K(0); o[0] = v[0]; }}\n")


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


def build_library(source: str, isa: str | None = None) -> ctypes.CDLL:
    """Compile ``source`` for ``isa`` (default: :func:`native_isa`; once per machine: cached by
    its hash) and load it. Thread-safe; the compile holds only its own key's lock, so a build in
    the background never blocks calls."""
    isa = isa or native_isa()
    if isa is None:
        raise CompileError(f"the C cell cannot be built: {no_isa_reason()}")
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
            # the line that says what failed (a linker's first line only names the function)
            first = next((ln for ln in lines if "undefined reference" in ln or "error:" in ln),
                         lines[0])
            old_mvec = "undefined reference to `_ZGV" in first
            raise CompileError(f"building the C cell failed ({cc}, for {path}): {full or first}; "
                               + (f"{path.parent} must have room and be writable; " if full else "")
                               + ("this libmvec lacks a vector function the cell calls (glibc 2.35 "
                                  "or newer has them all); " if old_mvec else "")
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


def _new_locks_in_child() -> None:
    # a build thread of the parent may have held them when the process forked: in the child
    # that thread does not exist, and they would never be released
    global _LOCK, _KEY_LOCKS
    _LOCK = threading.Lock()
    _KEY_LOCKS = {}


os.register_at_fork(after_in_child=_new_locks_in_child)

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


def builder() -> ThreadPoolExecutor:
    """The one background build thread (builds queue: one compile at a time)."""
    return _executor("c-build", 1)


def one_pass_builder() -> ThreadPoolExecutor:
    """The thread that compiles a build's one-pass library beside its main one."""
    return _executor("c-build-one-pass", 1)


def _pool() -> ThreadPoolExecutor:
    """The kernel threads, as many as torch's intra-op threads (grown when that grows)."""
    return _executor("c", torch.get_num_threads())


def spans(n: int, n_ops: int) -> list[tuple[int, int]]:
    """The element ranges of one call's threads."""
    least = max(PARALLEL_MIN, PARALLEL_WORK // max(n_ops, 1))
    if n < 2 * least:
        return [(0, n)]
    t = max(1, min(torch.get_num_threads(), n // least))
    step = -(-n // t)
    step += (-step) % 16          # whole vectors per thread
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def run_spans(spans, fn) -> None:
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
