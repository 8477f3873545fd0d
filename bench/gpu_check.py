"""`make gpu-check`: on a machine with a CUDA GPU (and no network), run the GPU tests, then benchmark every
kernel against torch's own, and print one table.

    PYTHONPATH=. python3 -m bench.gpu_check                  # everything, about 4 minutes on an H200
    PYTHONPATH=. python3 -m bench.gpu_check --quick          # shorter timings, target rows only
    PYTHONPATH=. python3 -m bench.gpu_check --only attention --skip-tests --out /tmp/r.md
    PYTHONPATH=. python3 -m bench.gpu_check --smoke --only gelu   # no GPU: this script's own check (CPU)

Steps:

1. Every Triton and CuPy kernel test compiled for the GPU (``tests/kernels/triton``, ``tests/kernels/cupy``,
   the Triton dispatch tests, the CUDA optimizer tests; ``pytest -n 12`` when pytest-xdist is there: about
   100 s on an H200) in a subprocess with a time limit; its summary line is printed and its whole output
   saved beside ``--out``.
2. The ceilings, measured in this run: a large device-to-device copy (bytes read + written per second) and a
   large bf16 ``torch.matmul`` on random data.
3. Every kernel through ``dlcore.ops`` (``backend='triton'`` on torch CUDA tensors, ``backend='cupy'`` on CuPy
   arrays) and the torch/cuBLAS reference on the same fresh random inputs. Each output is checked first
   (relative error ||out - ref|| / ||ref|| against an fp32 reference, after poisoning the allocator's free
   blocks with NaN so an unwritten element shows up), then both sides are timed with
   ``triton.testing.do_bench`` (CUDA events, warm-up, L2 flushed between runs, median). One failing kernel
   leaves every other row: its error is written in the table.
4. The table (kernel, backend, shape, dtype, ms, rate, share of the ceiling, x reference, target, met?),
   printed last and written to ``--out`` (default bench/GPU_RESULTS.md) with the card, versions and date.

Needs only what a CUDA image already has: torch (>= 2.1), triton for the Triton rows and do_bench (else CUDA
events), cupy for the CuPy rows, pytest for step 1; no pytest-benchmark, no hypothesis, no network.
Exit status: 0 when the tests passed and every row ran with correct output (a missed speed target is reported,
not an error); 1 otherwise; 2 when there is no CUDA GPU.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "GPU_RESULTS.md")
# every Triton and CuPy kernel test, compiled for the GPU (not only the gpu-marked ones: the interpreter
# cannot see Hopper codegen bugs, and on 2026-11-26 these runs found four), and the CUDA optimizer path
TEST_PATHS = ("tests/kernels/triton", "tests/kernels/cupy", "tests/dlcore/ops/test_triton_backend.py",
              "tests/dlcore/torch/test_optim.py")
NO_GPU_EXIT = 2


class CheckError(AssertionError):
    """A kernel's output does not match the reference."""


class Unavailable(RuntimeError):
    """What a row needs is not on this machine (CuPy, say): reported in one line, no traceback."""


# ----------------------------------------------------------------------------------------------------
# Rows and the table.
@dataclass
class Row:
    kernel: str
    backend: str
    shape: str
    dtype: str
    ms: float | None = None
    ref_ms: float | None = None
    rate: float | None = None  # in `unit`
    unit: str = ""  # 'TFLOP/s' or 'GB/s'
    share: float | None = None  # rate / the measured ceiling
    target: str = ""
    met: bool | None = None  # None: no target
    note: str = ""
    error: str = ""

    @property
    def x_ref(self) -> float | None:
        if self.ms and self.ref_ms:
            return self.ref_ms / self.ms
        return None


COLUMNS = ("kernel", "backend", "shape", "dtype", "ms", "rate", "% ceiling", "x ref", "target", "met?", "notes")


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def row_cells(r: Row, note_width: int = 70) -> list:
    """The table cells of one row, as strings."""
    ms = f"{r.ms:.3f}" if r.ms is not None else "-"
    if r.rate is None:
        rate = "-"
    elif r.unit == "GB/s":
        rate = f"{r.rate:.0f} GB/s"
    else:
        rate = f"{r.rate:.1f} {r.unit}"
    share = f"{100 * r.share:.0f}%" if r.share is not None else "-"
    xref = f"{r.x_ref:.2f}x" if r.x_ref is not None else "-"
    if r.error:
        met = "ERROR"
    elif r.met is None:
        met = "-"
    else:
        met = "yes" if r.met else "NO"
    note = r.note
    if r.error:
        note = ("ERROR " + r.error + ("; " + r.note if r.note else "")).strip()
    return [r.kernel, r.backend, r.shape, r.dtype, ms, rate, share, xref, r.target or "-", met,
            _short(note, note_width) if note_width else note]


def format_table(rows, note_width: int = 70) -> str:
    """A Markdown table of ``rows`` (one line each; long notes cut to ``note_width``, 0 = never)."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "| " + " | ".join("---:" if c in ("ms", "rate", "% ceiling", "x ref") else "---" for c in COLUMNS) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row_cells(r, note_width)) + " |")
    return "\n".join(lines)


def evaluate(r: Row, min_ratio: float | None, min_share: float | None, extra_ok: bool | None = None) -> None:
    """Set ``r.met`` from the targets (None when the row has none)."""
    checks = []
    if min_ratio is not None:
        checks.append(r.x_ref is not None and r.x_ref >= min_ratio)
    if min_share is not None:
        checks.append(r.share is not None and r.share >= min_share)
    if extra_ok is not None:
        checks.append(bool(extra_ok))
    r.met = all(checks) if checks else None


def target_text(min_ratio: float | None, min_share: float | None, extra: str = "", ceiling: str = "") -> str:
    parts = []
    if min_share is not None:
        parts.append(f">={100 * min_share:.0f}% {ceiling}".strip())
    if min_ratio is not None:
        parts.append(f">={min_ratio:g}x ref")
    if extra:
        parts.append(extra)
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# Step 1: the GPU tests.
@dataclass
class TestResult:
    summary: str
    returncode: int | None  # None: not run or timed out
    failures: list = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode in (0, 5)  # 5: no test selected


_SUMMARY = re.compile(r"\b(\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)|no tests ran)\b")


def parse_pytest_output(text: str) -> tuple:
    """(summary line, FAILED/ERROR lines) from ``pytest -q`` output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines) if _SUMMARY.search(ln)), "")
    failures = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    return summary, failures


def run_tests(timeout_s: float, log_path: str | None) -> TestResult:
    if importlib.util.find_spec("pytest") is None:
        return TestResult("pytest is not installed: tests not run", None)
    paths = [p for p in TEST_PATHS if os.path.exists(os.path.join(ROOT, p))]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *paths]
    if importlib.util.find_spec("xdist") is not None:  # kernel compilation is CPU-bound: spread it
        cmd[4:4] = ["-n", str(min(12, os.cpu_count() or 1))]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the GPU tests run the compiled kernels
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"$ {' '.join(cmd[1:])}   (limit {timeout_s:.0f} s)", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        out, _ = proc.communicate()
    took = time.monotonic() - t0
    out = out or ""
    if log_path:
        try:
            with open(log_path, "w") as f:
                f.write(out)
        except OSError as exc:
            print(f"could not write {log_path}: {exc}")
    summary, failures = parse_pytest_output(out)
    if timed_out:
        summary = f"TIMED OUT after {timeout_s:.0f} s" + (f" (last summary seen: {summary})" if summary else "")
        return TestResult(summary, None, failures, out)
    if not summary:
        tail = out.strip().splitlines()[-5:]
        summary = f"pytest exited {proc.returncode} with no summary: " + " / ".join(tail)
    return TestResult(f"{summary} [{took:.0f} s, exit {proc.returncode}]", proc.returncode, failures, out)


# ----------------------------------------------------------------------------------------------------
# The context: device, dtype, timer, memory, ceilings.
class Ctx:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.smoke = bool(args.smoke)
        self.quick = bool(args.quick)
        self.device = "cpu" if self.smoke else "cuda"
        self.dtype = torch.float32 if self.smoke else torch.bfloat16  # the interpreter has no bfloat16
        self.warmup_ms, self.rep_ms = (10, 40) if self.quick else (25, 100)
        self.seed = 0
        self.copy_gbs = None
        self.matmul_tflops = None
        try:
            from triton.testing import do_bench

            self._do_bench = do_bench
        except Exception:  # noqa: BLE001 - no triton (or a broken one): time with CUDA events ourselves
            self._do_bench = None
        self.timer_name = ("host clock (smoke: numbers are meaningless)" if self.smoke else
                           "triton.testing.do_bench (median)" if self._do_bench else "CUDA events (median)")

    # -- inputs ----------------------------------------------------------------------------------
    def gen(self):
        self.seed += 1
        g = self.torch.Generator(device=self.device)
        g.manual_seed(1234 + self.seed)
        return g

    def randn(self, *shape, dtype=None, scale=1.0):
        """Fresh standard-normal values (never zeros: METHOD.md), drawn in fp32 then cast."""
        t = self.torch.randn(*shape, generator=self.gen(), device=self.device, dtype=self.torch.float32)
        if scale != 1.0:
            t.mul_(scale)
        return t.to(dtype or self.dtype)

    def randint(self, high, shape):
        return self.torch.randint(0, high, shape, generator=self.gen(), device=self.device)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    # -- timing ----------------------------------------------------------------------------------
    def _event_ms(self, fn) -> float:
        torch = self.torch
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)

    def time_ms(self, fn) -> float:
        """Median milliseconds of ``fn`` (already run once by the check, so compiled and warm)."""
        if self.smoke:
            ts = []
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts)
        fn()
        self.sync()
        first = self._event_ms(fn)
        if first > 150:  # slow kernel: three runs are plenty, and keep the time budget
            return statistics.median([first, self._event_ms(fn), self._event_ms(fn)])
        if self._do_bench is not None:
            try:
                return float(self._do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
            except TypeError:  # an old triton without return_mode
                return float(self._do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms))
        n_warm = max(1, int(self.warmup_ms / max(first, 1e-3)))
        n_rep = max(5, min(1000, int(self.rep_ms / max(first, 1e-3))))
        flush = self.torch.empty(64 << 20, dtype=self.torch.int32, device="cuda")  # 256 MB: flush L2
        for _ in range(n_warm):
            fn()
        ts = []
        for _ in range(n_rep):
            flush.zero_()
            ts.append(self._event_ms(fn))
        return statistics.median(ts)

    # -- memory ----------------------------------------------------------------------------------
    def poison(self, *nbytes, cupy=False):
        """Leave NaN-filled free blocks of these sizes in torch's (``cupy=True``: CuPy's) caching allocator, so
        a kernel output allocated next that is not fully written shows NaN instead of an old right answer."""
        if self.smoke:
            return
        torch = self.torch
        blocks = [torch.full((max(int(n), 4) // 4,), float("nan"), dtype=torch.float32, device="cuda") for n in nbytes]
        del blocks
        cp = _cupy_or_none() if cupy else None
        if cp is not None:
            cblocks = [cp.full((max(int(n), 4) // 4,), cp.nan, dtype=cp.float32) for n in nbytes]
            del cblocks

    def free(self):
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
        cp = _cupy_or_none()
        if cp is not None:
            cp.get_default_memory_pool().free_all_blocks()

    def context_broken(self) -> str | None:
        """After a failure: None if the CUDA context still works, else why not (a sticky error such as an
        illegal address poisons every later CUDA call in this process)."""
        if self.device != "cuda":
            return None
        try:
            x = self.torch.ones(16, device="cuda")
            ok = float((x * 2).sum()) == 32.0
            self.torch.cuda.synchronize()
            return None if ok else "a probe computed the wrong value"
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {_short(exc, 120)}"

    def peak_extra_bytes(self, fn) -> int | None:
        """Peak torch allocations during ``fn()`` beyond what was allocated before it (None on the CPU)."""
        if self.device != "cuda":
            fn()
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak


_CUPY = "unset"


def _cupy_or_none():
    """CuPy when it imports and sees a device, else None (looked up once)."""
    global _CUPY
    if _CUPY == "unset":
        _CUPY = None
        if importlib.util.find_spec("cupy") is not None:
            try:
                import cupy

                if cupy.cuda.runtime.getDeviceCount() > 0:
                    _CUPY = cupy
            except Exception:  # noqa: BLE001 - no usable CUDA runtime for CuPy
                _CUPY = None
    return _CUPY


def _need_cupy():
    cp = _cupy_or_none()
    if cp is None:
        raise Unavailable("CuPy is not importable or sees no CUDA device")
    return cp


# ----------------------------------------------------------------------------------------------------
# Correctness.
def as_torch(a):
    """A torch view of a torch tensor or CuPy array (DLPack, no copy)."""
    if hasattr(a, "detach"):
        return a.detach()
    import torch

    return torch.from_dlpack(a)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 sums over chunks; inf when out has NaN/inf where ref is finite."""
    import torch

    o, r = as_torch(out).reshape(-1), as_torch(ref).reshape(-1)
    if o.numel() != r.numel():
        raise CheckError(f"{o.numel()} elements, reference has {r.numel()}")
    num = torch.zeros((), dtype=torch.float64, device=o.device)
    den = torch.zeros((), dtype=torch.float64, device=o.device)
    bad = torch.zeros((), dtype=torch.int64, device=o.device)
    step = 1 << 26
    for i in range(0, o.numel(), step):
        oc, rc = o[i:i + step].double(), r[i:i + step].double()
        fin = torch.isfinite(rc)
        bad += (fin & ~torch.isfinite(oc)).sum()
        d = torch.where(fin, oc - rc, torch.zeros_like(oc))
        num += d.square().sum()
        den += torch.where(fin, rc, torch.zeros_like(rc)).square().sum()
    if int(bad):
        return math.inf
    num, den = float(num), float(den)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def tol_for(dtype_name: str) -> float:
    """Relative-error bound by storage dtype (METHOD.md: bf16 operands land between 1e-3 and 1e-2)."""
    return {"bfloat16": 1.6e-2, "float16": 4e-3, "float32": 1e-4, "float64": 1e-10}.get(dtype_name, 1e-2)


def compare(label: str, out, ref, torch_out=None, dtype_name: str = "bfloat16") -> str:
    """Raise CheckError unless ``out`` is within the dtype's bound (or twice torch's own error) of the
    higher-precision ``ref``; return a short note."""
    err = rel_err(out, ref)
    t_err = rel_err(torch_out, ref) if torch_out is not None else 0.0
    bound = max(tol_for(dtype_name), 2 * t_err)
    if not err <= bound:
        raise CheckError(f"{label}: rel err {err:.2e} > {bound:.1e} (torch's own {t_err:.1e})")
    return f"{label} err {err:.1e}"


# ----------------------------------------------------------------------------------------------------
# The benchmarks.
@dataclass
class Bench:
    fn: Callable  # the dlcore side
    ref: Callable  # the torch/cuBLAS reference
    check: Callable  # () -> note; raises CheckError
    flops: float | None = None
    nbytes: float | None = None
    after: Callable | None = None  # (row) -> extra_ok or None: extra measurements after timing


@dataclass
class Case:
    kernel: str
    backend: str
    shape: str
    dtype: str
    setup: Callable  # (ctx) -> Bench
    min_ratio: float | None = None
    min_share: float | None = None
    extra_target: str = ""
    informational: bool = False


def _dt(ctx, cupy_dtype=None) -> str:
    return cupy_dtype or str(ctx.dtype).replace("torch.", "")


def _ops():
    from dlcore import ops

    return ops


def matmul_case(ctx, n):
    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        a, b = ctx.randn(n, n), ctx.randn(n, n)

        def check():
            ctx.poison(n * n * a.element_size())
            out = ops.matmul(a, b, backend="triton")
            tout = torch.matmul(a, b)
            ref = torch.matmul(a.float(), b.float())
            return compare("out", out, ref, tout, _dt(ctx))

        return Bench(lambda: ops.matmul(a, b, backend="triton"), lambda: torch.matmul(a, b), check,
                     flops=2.0 * n ** 3)

    return setup


def rowwise_case(ctx, R, C, which):
    """softmax / log_softmax / layer_norm / gelu forward over an (R, C) array."""

    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        F = torch.nn.functional
        x = ctx.randn(R, C, scale=2.0)
        isz = x.element_size()
        if which == "softmax":
            mine, theirs = (lambda: ops.softmax(x, -1, backend="triton")), (lambda: F.softmax(x, -1))
            ref = lambda: F.softmax(x.float(), -1)
            nbytes = 2 * R * C * isz
        elif which == "log_softmax":
            mine, theirs = (lambda: ops.log_softmax(x, -1, backend="triton")), (lambda: F.log_softmax(x, -1))
            ref = lambda: F.log_softmax(x.float(), -1)
            nbytes = 2 * R * C * isz
        elif which == "layer_norm":
            w, b = ctx.randn(C), ctx.randn(C)
            mine = lambda: ops.layer_norm(x, (C,), w, b, 1e-5, backend="triton")
            theirs = lambda: F.layer_norm(x, (C,), w, b, 1e-5)
            ref = lambda: F.layer_norm(x.float(), (C,), w.float(), b.float(), 1e-5)
            nbytes = 2 * R * C * isz + 2 * C * isz + 2 * R * isz  # x, y; weight, bias; mean, rstd
        elif which == "gelu":
            mine, theirs = (lambda: ops.gelu(x, backend="triton")), (lambda: F.gelu(x))
            ref = lambda: F.gelu(x.float())
            nbytes = 2 * R * C * isz
        else:
            raise ValueError(which)

        def check():
            ctx.poison(R * C * isz)
            return compare("out", mine(), ref(), theirs(), _dt(ctx))

        return Bench(mine, theirs, check, nbytes=nbytes)

    return setup


def cross_entropy_case(ctx, N, C, backend="triton", cupy_dtype=None):
    """Loss and d(loss)/d(logits), mean reduction: dlcore's fused pass under torch autograd vs torch's."""

    def setup(ctx):
        torch = ctx.torch
        F = torch.nn.functional
        ops = _ops()
        cp = _need_cupy() if backend == "cupy" else None
        dtype = getattr(torch, cupy_dtype) if cupy_dtype else ctx.dtype
        x = ctx.randn(N, C, dtype=dtype, scale=2.0).requires_grad_(True)
        t = ctx.randint(C, (N,))
        logits_bytes = N * C * x.element_size()
        if cp is not None:
            xc, tc = cp.from_dlpack(x.detach()), cp.from_dlpack(t)

            def mine():
                # CuPy arrays have no torch autograd: the loss, then the gradient through the explicit backward
                ops.cross_entropy(xc, tc, backend="cupy")
                return ops.cross_entropy_backward(cp.ones((), dtype=xc.dtype), xc, tc, backend="cupy")
        else:
            def mine():
                loss = ops.cross_entropy(x, t, backend="triton")
                (g,) = torch.autograd.grad(loss, x)
                return g

        def theirs():
            (g,) = torch.autograd.grad(F.cross_entropy(x, t), x)
            return g

        def check():
            x32 = x.detach().float().requires_grad_(True)
            loss32 = F.cross_entropy(x32, t)
            (g32,) = torch.autograd.grad(loss32, x32)
            del x32
            notes = []
            if backend == "triton":
                ctx.poison(logits_bytes)
                loss = ops.cross_entropy(x, t, backend="triton")
                notes.append(compare("loss", loss.detach().reshape(1), loss32.detach().reshape(1), None,
                                     _dt(ctx, cupy_dtype)))
                (g,) = torch.autograd.grad(loss, x)
            else:
                ctx.poison(logits_bytes, cupy=True)
                g = mine()
            notes.append(compare("grad", g, g32, theirs(), _dt(ctx, cupy_dtype)))
            return "; ".join(notes)

        def after(row):
            if backend != "triton" or ctx.device != "cuda":
                return None
            mine_peak = ctx.peak_extra_bytes(mine)
            torch_peak = ctx.peak_extra_bytes(theirs)
            # the gradient itself is one logits-sized buffer in the logits' dtype; a fp32 logits-sized
            # temporary would add 2x more (bf16)
            ok = mine_peak < 1.5 * logits_bytes
            row.note = (row.note + "; " if row.note else "") + (
                f"peak extra mem {mine_peak / logits_bytes:.2f}x logits (torch {torch_peak / logits_bytes:.2f}x)")
            return ok

        # the floor: read the logits once, write the gradient once
        return Bench(mine, theirs, check, nbytes=2 * logits_bytes, after=after)

    return setup


def _sdpa_flops(B, H, L, D, causal, backward):
    f = 4.0 * B * H * L * L * D * (0.5 if causal else 1.0)
    return f * 2.5 if backward else f


def _flash_only(torch):
    """A context that limits torch's SDPA to its FlashAttention-2 kernel (the issue's reference), or None
    where that backend cannot be chosen (CPU, old torch)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def attention_case(ctx, B, H, L, D, causal, backward, backend="triton", cupy_dtype=None):
    """Attention against torch SDPA restricted to its FlashAttention-2 kernel (the target's reference);
    torch's default SDPA choice (cuDNN on some builds) is timed too and named in the notes."""

    def setup(ctx):
        torch = ctx.torch
        F = torch.nn.functional
        ops = _ops()
        from dlcore.ops import attention as att

        cp = _need_cupy() if backend == "cupy" else None
        dtype = getattr(torch, cupy_dtype) if cupy_dtype else ctx.dtype
        q, k, v = (ctx.randn(B, H, L, D, dtype=dtype) for _ in range(3))
        dname = _dt(ctx, cupy_dtype)
        if cp is not None:
            qn, kn, vn = (cp.from_dlpack(a) for a in (q, k, v))
        else:
            qn, kn, vn = q, k, v

        def fwd_mine():
            return ops.scaled_dot_product_attention(qn, kn, vn, is_causal=causal, backend=backend)

        flash = _flash_only(torch)

        def fwd_default():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def fwd_theirs():
            if flash is None:
                return fwd_default()
            with flash():
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def default_note(row, fn):
            ms = ctx.time_ms(fn)
            if backend == "triton" and not ctx.smoke:
                from dlcore.kernels.triton.attention import tuned_configs

                print(f"    autotuned so far: {tuned_configs()}", flush=True)
            row.note = (row.note + "; " if row.note else "") + (
                f"ref = torch SDPA {'FLASH_ATTENTION only' if flash else 'default'}; torch default backend "
                f"{ms:.3f} ms ({row.ms / ms if row.ms else float('nan'):.2f}x of it)")

        if not backward:
            def check():
                ctx.poison(q.numel() * q.element_size(), cupy=cp is not None)
                ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
                return compare("out", fwd_mine(), ref, fwd_theirs(), dname)

            return Bench(fwd_mine, fwd_theirs, check, flops=_sdpa_flops(B, H, L, D, causal, False),
                         after=lambda row: default_note(row, fwd_default))

        # backward alone: dlcore's launcher backward (the one torch autograd calls) on a saved forward,
        # against torch's SDPA backward on a retained graph
        g = ctx.randn(B, H, L, D, dtype=dtype)
        gn = cp.from_dlpack(g) if cp is not None else g
        call, params = att._prepare("scaled_dot_product_attention", qn, kn, vn, None, causal, None, backend)
        natives = [call.to_native(a) for a in (qn, kn, vn)]
        _, saved = att._fwd(call, *natives, None, **params)
        g_native = call.to_native(gn)

        def bwd_mine():
            return att._bwd(call, saved, g_native, (True, True, True, False), **params)[:3]

        qr, kr, vr = (a.detach().clone().requires_grad_(True) for a in (q, k, v))
        out_default = F.scaled_dot_product_attention(qr, kr, vr, is_causal=causal)
        out_ref = fwd_theirs_graph = None
        if flash is not None:
            with flash():
                fwd_theirs_graph = F.scaled_dot_product_attention(qr, kr, vr, is_causal=causal)
        out_ref = fwd_theirs_graph if fwd_theirs_graph is not None else out_default

        def bwd_theirs():
            return torch.autograd.grad(out_ref, (qr, kr, vr), g, retain_graph=True)

        def bwd_default():
            return torch.autograd.grad(out_default, (qr, kr, vr), g, retain_graph=True)

        def check():
            ctx.poison(*(3 * [q.numel() * q.element_size()]), cupy=cp is not None)
            mine = bwd_mine()
            theirs = bwd_theirs()
            q32, k32, v32 = (a.detach().float().requires_grad_(True) for a in (q, k, v))
            o32 = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
            ref = torch.autograd.grad(o32, (q32, k32, v32), g.float())
            return "; ".join(compare(f"d{n}", m, r, t, dname) for n, m, r, t in zip("qkv", mine, ref, theirs))

        return Bench(bwd_mine, bwd_theirs, check, flops=_sdpa_flops(B, H, L, D, causal, True),
                     after=lambda row: default_note(row, bwd_default))

    return setup


def _sizes(total, n_big, n_small, small):
    big = (total - n_small * small) // n_big
    return [big] * n_big + [small] * n_small


def adamw_case(ctx, sizes, backend="triton"):
    """One AdamW step over many fp32 tensors vs torch.optim.AdamW(fused=True).

    backend 'triton': `dlcore.torch.AdamW` (the torch.optim drop-in; CUDA parameters go to one Triton
    multi-tensor launch per step). backend 'cupy': `dlcore.ops.adamw_` per CuPy array."""

    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        cp = _need_cupy() if backend == "cupy" else None
        hp = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}
        f32 = torch.float32
        P = [ctx.randn(n, dtype=f32) for n in sizes]
        G = [ctx.randn(n, dtype=f32, scale=0.1) for n in sizes]
        # torch's copy of the same state
        Pt = [p.clone() for p in P]
        for p, g in zip(Pt, G):
            p.grad = g.clone()
        kw = {"lr": hp["lr"], "betas": (hp["beta1"], hp["beta2"]), "eps": hp["eps"],
              "weight_decay": hp["weight_decay"]}
        try:
            opt = torch.optim.AdamW(Pt, fused=True, **kw)
            opt_kind = "fused=True"
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.AdamW(Pt, foreach=True, **kw)
            opt_kind = "foreach=True (fused unavailable)"
        if backend == "triton":
            import dlcore.torch

            for p, g in zip(P, G):
                p.grad = g
            mine_opt = dlcore.torch.AdamW(P, **kw)
            mine = mine_opt.step
            # the moments exist after the first step; read them through these lists
            M = _LazyStates(mine_opt, P, "exp_avg")
            V = _LazyStates(mine_opt, P, "exp_avg_sq")
        else:
            M = [torch.zeros_like(p) for p in P]
            V = [torch.zeros_like(p) for p in P]
            arrays = [[cp.from_dlpack(a) for a in lst] for lst in (P, G, M, V)]
            state = {"step": 0}

            def mine():
                state["step"] += 1
                for p, g, m, v in zip(*arrays):
                    ops.adamw_(p, g, m, v, step=state["step"], backend=backend, **hp)

        # correctness reference: torch's foreach AdamW on copies of a few tensors (big and small). Its
        # arithmetic is the single-tensor one dlcore follows; the fused CUDA AdamW forms 1 - beta2 in fp32
        # (1 - fp32(0.999) is 1.3e-5 off 0.001), so its exp_avg_sq differs from both by that much.
        pick = sorted(set(range(min(3, len(sizes)))) | set(range(max(0, len(sizes) - 3), len(sizes))))
        Pf = [P[i].clone() for i in pick]
        for p, i in zip(Pf, pick):
            p.grad = G[i].clone()
        opt_ref = torch.optim.AdamW(Pf, foreach=True, **kw)

        def check():
            mine()  # step 1 from zero state on all sides
            opt.step()
            opt_ref.step()
            notes = []
            for name, a, ref, fused in (
                    ("param", P, Pf, Pt),
                    ("exp_avg", M, [opt_ref.state[p]["exp_avg"] for p in Pf], [opt.state[p]["exp_avg"] for p in Pt]),
                    ("exp_avg_sq", V, [opt_ref.state[p]["exp_avg_sq"] for p in Pf],
                     [opt.state[p]["exp_avg_sq"] for p in Pt])):
                worst = max(rel_err(a[i], r) for i, r in zip(pick, ref))
                if not worst <= 1e-6:
                    raise CheckError(f"{name}: rel err {worst:.2e} > 1e-6 vs torch AdamW(foreach=True)")
                vs_fused = max(rel_err(x, y) for x, y in zip(a, fused))
                notes.append(f"{name} {worst:.0e} (vs fused {vs_fused:.0e})")
            return "step-1 err vs torch foreach: " + " ".join(notes)

        def after(row):
            ctx.sync()
            t0 = time.perf_counter()
            mine()
            host = (time.perf_counter() - t0) * 1e3
            ctx.sync()
            api = "dlcore.torch.AdamW" if backend == "triton" else "dlcore.ops.adamw_ per array"
            row.note = (row.note + "; " if row.note else "") + (
                f"{api}, {len(sizes)} tensors; host {host:.2f} ms/step; ref AdamW({opt_kind})")

        n = sum(sizes)
        return Bench(mine, opt.step, check, nbytes=7 * 4 * n, after=after)  # read p, g, m, v; write p, m, v

    return setup


class _LazyStates:
    """``opt.state[p][name]`` for each p, looked up when read (the states are made by the first step)."""

    def __init__(self, opt, params, name):
        self.opt, self.params, self.name = opt, params, name

    def __getitem__(self, i):
        return self.opt.state[self.params[i]][self.name]

    def __iter__(self):
        return (self.opt.state[p][self.name] for p in self.params)

    def __len__(self):
        return len(self.params)


def sgd_case(ctx, n, backend="cupy"):
    """One SGD step with momentum 0.9 over one fp32 tensor vs torch.optim.SGD(fused=True)."""

    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        cp = _need_cupy() if backend == "cupy" else None
        f32 = torch.float32
        p, g = ctx.randn(n, dtype=f32), ctx.randn(n, dtype=f32, scale=0.1)
        buf = torch.zeros_like(p)
        pt = p.clone()
        pt.grad = g.clone()
        try:
            opt = torch.optim.SGD([pt], lr=1e-2, momentum=0.9, fused=True)
            kind = "fused=True"
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.SGD([pt], lr=1e-2, momentum=0.9, foreach=True)
            kind = "foreach=True"
        if cp is not None:
            pn, gn, bn = (cp.from_dlpack(a) for a in (p, g, buf))
        else:
            pn, gn, bn = p, g, buf

        def mine():
            ops.sgd_(pn, gn, bn, lr=1e-2, momentum=0.9, backend=backend)

        def check():
            mine()
            opt.step()  # torch's first step sets buf = grad; dlcore's from a zero buffer gives the same
            e = rel_err(p, pt)
            if not e <= 1e-6:
                raise CheckError(f"param rel err {e:.2e} > 1e-6 vs torch SGD({kind})")
            return f"param err {e:.0e}; ref SGD({kind})"

        return Bench(mine, opt.step, check, nbytes=5 * 4 * n)  # read p, g, buf; write p, buf

    return setup


def cupy_unary_case(ctx, n, which, dtype_name="float32"):
    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        F = torch.nn.functional
        cp = _need_cupy()
        x = ctx.randn(n, dtype=getattr(torch, dtype_name), scale=2.0)
        xc = cp.from_dlpack(x)
        mine = lambda: getattr(ops, which)(xc, backend="cupy")
        tfn = getattr(F, which)
        theirs = lambda: tfn(x)

        def check():
            ctx.poison(x.numel() * x.element_size(), cupy=True)
            return compare("out", mine(), tfn(x.double()), theirs(), dtype_name)

        return Bench(mine, theirs, check, nbytes=2 * n * x.element_size())

    return setup


def cupy_rowwise_case(ctx, R, C, which, dtype_name="float16"):
    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        F = torch.nn.functional
        cp = _need_cupy()
        x = ctx.randn(R, C, dtype=getattr(torch, dtype_name), scale=2.0)
        xc = cp.from_dlpack(x)
        isz = x.element_size()
        if which == "layer_norm":
            w, b = ctx.randn(C, dtype=x.dtype), ctx.randn(C, dtype=x.dtype)
            wc, bc = cp.from_dlpack(w), cp.from_dlpack(b)
            mine = lambda: ops.layer_norm(xc, (C,), wc, bc, 1e-5, backend="cupy")
            theirs = lambda: F.layer_norm(x, (C,), w, b, 1e-5)
            ref = lambda: F.layer_norm(x.float(), (C,), w.float(), b.float(), 1e-5)
        else:
            mine = lambda: getattr(ops, which)(xc, -1, backend="cupy")
            theirs = lambda: getattr(F, which)(x, -1)
            ref = lambda: getattr(F, which)(x.float(), -1)

        def check():
            ctx.poison(R * C * isz, cupy=True)
            return compare("out", mine(), ref(), theirs(), dtype_name)

        return Bench(mine, theirs, check, nbytes=2 * R * C * isz)

    return setup


def cupy_matmul_case(ctx, n, dtype_name="float16"):
    def setup(ctx):
        torch, ops = ctx.torch, _ops()
        cp = _need_cupy()
        a, b = ctx.randn(n, n, dtype=getattr(torch, dtype_name)), ctx.randn(n, n, dtype=getattr(torch, dtype_name))
        ac, bc = cp.from_dlpack(a), cp.from_dlpack(b)
        mine = lambda: ops.matmul(ac, bc, backend="cupy")
        theirs = lambda: torch.matmul(a, b)

        def check():
            ctx.poison(n * n * a.element_size(), cupy=True)
            return compare("out", mine(), torch.matmul(a.float(), b.float()), theirs(), dtype_name)

        return Bench(mine, theirs, check, flops=2.0 * n ** 3)

    return setup


def cases(ctx) -> list:
    """Every benchmark row, the ones with targets first (the time budget cuts from the end)."""
    s = ctx.smoke
    dt = _dt(ctx)
    # shapes: the targets; --smoke: tiny ones that the Triton interpreter runs in seconds
    mm = (64, 96) if s else (4096, 8192)
    R, C = (32, 256) if s else (16384, 8192)
    N, V = (16, 1000) if s else (8192, 128256)
    B, H, L, D = (1, 2, 64, 16) if s else (4, 16, 4096, 128)
    adam_sizes = _sizes(60_000, 6, 4, 1000) if s else _sizes(350_000_000, 64, 36, 409_600)
    n256 = 4096 if s else 256 << 20
    cR, cC = (32, 256) if s else (16384, 8192)
    out = [
        Case("matmul", "triton", f"{mm[0]}^3", dt, matmul_case(ctx, mm[0]), 0.9),
        Case("matmul", "triton", f"{mm[1]}^3", dt, matmul_case(ctx, mm[1]), 0.9),
        Case("softmax fwd", "triton", f"{R}x{C}", dt, rowwise_case(ctx, R, C, "softmax"), 1.0, 0.8),
        Case("log_softmax fwd", "triton", f"{R}x{C}", dt, rowwise_case(ctx, R, C, "log_softmax"), 1.0, 0.8),
        Case("layer_norm fwd", "triton", f"{R}x{C}", dt, rowwise_case(ctx, R, C, "layer_norm"), 1.0, 0.8),
        Case("gelu fwd", "triton", f"{R}x{C}", dt, rowwise_case(ctx, R, C, "gelu"), 1.0, 0.8),
        Case("cross_entropy fwd+bwd", "triton", f"{N}x{V}", dt, cross_entropy_case(ctx, N, V), 2.0, None,
             "no fp32 logits buffer"),
        Case("attention fwd causal", "triton", f"B{B} H{H} L{L} D{D}", dt,
             attention_case(ctx, B, H, L, D, True, False), 1.0),
        Case("attention fwd", "triton", f"B{B} H{H} L{L} D{D}", dt, attention_case(ctx, B, H, L, D, False, False),
             1.0, None, "aim 450 TFLOP/s"),
        Case("attention bwd causal", "triton", f"B{B} H{H} L{L} D{D}", dt,
             attention_case(ctx, B, H, L, D, True, True), 0.8),
        Case("attention bwd", "triton", f"B{B} H{H} L{L} D{D}", dt, attention_case(ctx, B, H, L, D, False, True), 0.8),
        Case("adamw_ step", "triton", f"{len(adam_sizes)} tensors, {sum(adam_sizes) / 1e6:.0f}M", "float32",
             adamw_case(ctx, adam_sizes), 1.0),
        Case("gelu fwd", "cupy", f"{n256 >> 20}M" if not s else str(n256), "float32",
             cupy_unary_case(ctx, n256, "gelu"), None, 0.8),
        Case("relu fwd", "cupy", f"{n256 >> 20}M" if not s else str(n256), "float32",
             cupy_unary_case(ctx, n256, "relu"), None, 0.8),
        Case("silu fwd", "cupy", f"{n256 >> 20}M" if not s else str(n256), "float32",
             cupy_unary_case(ctx, n256, "silu"), None, 0.8),
        Case("adamw_ step", "cupy", f"{n256 >> 20}M" if not s else str(n256), "float32",
             adamw_case(ctx, [n256], backend="cupy"), None, 0.8),
        Case("sgd_ momentum step", "cupy", f"{n256 >> 20}M" if not s else str(n256), "float32",
             sgd_case(ctx, n256, backend="cupy"), None, 0.8),
        # no target: how the CuPy backend does on the Triton rows' work (fp16: CuPy has no bfloat16)
        Case("softmax fwd", "cupy", f"{cR}x{cC}", "float16", cupy_rowwise_case(ctx, cR, cC, "softmax"),
             informational=True),
        Case("layer_norm fwd", "cupy", f"{cR}x{cC}", "float16", cupy_rowwise_case(ctx, cR, cC, "layer_norm"),
             informational=True),
        Case("cross_entropy fwd+bwd", "cupy", f"{N}x{V}", "float16",
             cross_entropy_case(ctx, N, V, backend="cupy", cupy_dtype="float16"), informational=True),
        Case("matmul", "cupy", f"{mm[0]}^3", "float16", cupy_matmul_case(ctx, mm[0]), informational=True),
        Case("attention fwd", "cupy", f"B{B} H{H} L{L} D{D}", "float16",
             attention_case(ctx, B, H, L, D, False, False, backend="cupy", cupy_dtype="float16"),
             informational=True),
    ]
    return out


def run_case(ctx, case: Case) -> Row:
    row = Row(case.kernel, case.backend, case.shape, case.dtype,
              target=target_text(case.min_ratio, case.min_share, case.extra_target, "copy BW"))
    bench = None
    t0 = time.monotonic()
    try:
        bench = case.setup(ctx)
        wrong = None
        try:
            row.note = bench.check()
        except CheckError as exc:
            wrong = f"WRONG RESULT: {exc}"
        row.ms = ctx.time_ms(bench.fn)
        row.ref_ms = ctx.time_ms(bench.ref)
        if bench.flops:
            row.rate, row.unit = bench.flops / (row.ms * 1e-3) / 1e12, "TFLOP/s"
            if ctx.matmul_tflops:
                row.share = row.rate / ctx.matmul_tflops
        elif bench.nbytes:
            row.rate, row.unit = bench.nbytes / (row.ms * 1e-3) / 1e9, "GB/s"
            if ctx.copy_gbs:
                row.share = row.rate / ctx.copy_gbs
        extra_ok = bench.after(row) if bench.after else None
        evaluate(row, case.min_ratio, case.min_share, extra_ok)
        if wrong:
            row.error = wrong
            row.met = False
    except Unavailable as exc:
        if ctx.smoke:
            row.note = f"skipped: {exc}"
        else:
            row.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one kernel's failure must leave every other row
        row.error = f"{type(exc).__name__}: {exc}"
        print(f"  {case.kernel} [{case.backend}] failed:", flush=True)
        traceback.print_exc(file=sys.stdout)
    finally:
        del bench
        try:
            ctx.free()
        except Exception as exc:  # noqa: BLE001
            print(f"  (freeing memory failed: {exc})")
    line = f"  {case.kernel} [{case.backend}] {case.shape} {case.dtype}: "
    line += (f"{row.ms:.3f} ms, ref {row.ref_ms:.3f} ms" if row.ms and row.ref_ms
             else (row.error or row.note or "no timing"))
    print(line + f"  ({time.monotonic() - t0:.1f} s)", flush=True)
    return row


# ----------------------------------------------------------------------------------------------------
# Step 2: ceilings.
def _copy_gbs(ctx, n) -> float:
    src = ctx.randn(n, dtype=ctx.torch.float32)
    dst = ctx.torch.empty_like(src)
    dst.copy_(src)
    ms = ctx.time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _matmul_tflops(ctx, n) -> float:
    a, b = ctx.randn(n, n), ctx.randn(n, n)
    ms = ctx.time_ms(lambda: ctx.torch.matmul(a, b))
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


def measure_ceilings(ctx) -> None:
    """The two ceilings every row is measured against (METHOD.md), in this run, on random data."""
    n_copy = (1 << 20) if ctx.smoke else (512 << 20)  # fp32 elements: 2 GiB read + 2 GiB written on the GPU
    n_mm = 256 if ctx.smoke else 8192
    ctx.copy_desc = f"{n_copy * 4 >> 20} MiB device-to-device copy"
    ctx.mm_desc = f"{str(ctx.dtype).replace('torch.', '')} torch.matmul {n_mm}^3"
    try:
        ctx.copy_gbs = _copy_gbs(ctx, n_copy)
    except Exception as exc:  # noqa: BLE001
        print(f"copy ceiling failed: {type(exc).__name__}: {exc}")
    ctx.free()
    try:
        ctx.matmul_tflops = _matmul_tflops(ctx, n_mm)
    except Exception as exc:  # noqa: BLE001
        print(f"matmul ceiling failed: {type(exc).__name__}: {exc}")
    ctx.free()


# ----------------------------------------------------------------------------------------------------
# Report.
def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "cupy", "numpy"):
        if importlib.util.find_spec(name) is None:
            out[name] = "not installed"
            continue
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001
            out[name] = f"broken ({type(exc).__name__})"
    return out


def _commit() -> str:
    try:
        rev = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, stderr=subprocess.DEVNULL) != 0
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _card(ctx) -> str:
    if ctx.smoke:
        return "none (--smoke: CPU, Triton interpreter)"
    torch = ctx.torch
    p = torch.cuda.get_device_properties(0)
    return f"{torch.cuda.get_device_name(0)} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB)"


def header_lines(ctx, tests: TestResult | None, elapsed_s: float) -> list:
    v = _versions()
    copy = f"{ctx.copy_gbs:.0f} GB/s" if ctx.copy_gbs else "not measured"
    mm = f"{ctx.matmul_tflops:.0f} TFLOP/s" if ctx.matmul_tflops else "not measured"
    lines = [
        f"- card: {_card(ctx)}",
        (f"- software: Python {v['python']}, torch {v['torch']}, triton {v['triton']}, cupy {v['cupy']}, "
         f"numpy {v['numpy']}"),
        (f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}, commit {_commit()}, "
         f"total {elapsed_s:.0f} s"),
        (f"- ceilings measured in this run: {getattr(ctx, 'copy_desc', 'copy')} {copy} (bytes read + written); "
         f"{getattr(ctx, 'mm_desc', 'matmul')} {mm} (random inputs)"),
        f"- timing: {ctx.timer_name}; fresh random inputs per row; outputs checked against an fp32 reference first",
    ]
    if tests is not None:
        lines.append(f"- tests (`pytest -q -m \"not slow\" {' '.join(TEST_PATHS)}`): {tests.summary}")
        for f in tests.failures[:10]:
            lines.append(f"  - {_short(f, 160)}")
        if len(tests.failures) > 10:
            lines.append(f"  - ... and {len(tests.failures) - 10} more (see the test log)")
    return lines


def write_markdown(path: str, header: list, rows: list) -> None:
    lines = [
        "# GPU check",
        "",
        "Written by `make gpu-check` (`python3 -m bench.gpu_check`); do not edit by hand. `ms` is the median",
        "time of dlcore's kernel through `dlcore.ops`; `x ref` = reference ms / dlcore ms (> 1: faster than",
        "torch / cuBLAS on the same inputs; optimizers: torch's `fused=True` step); `% ceiling` = achieved rate",
        "over this run's measured copy bandwidth (memory-bound rows) or bf16 matmul rate (matmul, attention).",
        "Bandwidth counts the fewest bytes the kernel must move (each input read once, each output written once).",
        "",
        *header,
        "",
        format_table(rows, note_width=0),
        "",
    ]
    errors = [r for r in rows if r.error]
    if errors:
        lines += ["## Errors", ""]
        lines += [f"- {r.kernel} [{r.backend}] {r.shape}: {r.error}" for r in errors]
        lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python3 -m bench.gpu_check",
        description="GPU tests, then a benchmark of every dlcore kernel against torch, with a table at the end. "
                    "Needs a CUDA GPU (exits 2 without one).")
    p.add_argument("--quick", action="store_true",
                   help="shorter timings (warm-up 10 ms, 40 ms of repeats), a 60 s test limit, target rows only")
    p.add_argument("--out", default=None,
                   help=f"where to write the Markdown table (default {os.path.relpath(DEFAULT_OUT, ROOT)}); "
                        "the pytest log goes beside it")
    p.add_argument("--skip-tests", action="store_true", help="skip step 1 (the gpu-marked pytest run)")
    p.add_argument("--test-timeout", type=float, default=None, help="seconds for step 1 (default 300; --quick 90)")
    p.add_argument("--only", default=None, metavar="REGEX",
                   help="benchmark only rows whose 'kernel backend shape' matches REGEX (e.g. 'attention|cupy')")
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds for the whole run: rows not started by then are listed as skipped (default 450)")
    p.add_argument("--smoke", action="store_true",
                   help="check this script without a GPU: tiny fp32 shapes on the CPU through TRITON_INTERPRET=1, "
                        "no tests, no file unless --out (numbers meaningless)")
    return p.parse_args(argv)


_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")  # Linux driver; WSL's GPU device


def _no_gpu(msg: str) -> int:
    print(f"gpu_check: {msg}. `make gpu-check` needs a machine with a CUDA GPU; nothing was run.", file=sys.stderr)
    return NO_GPU_EXIT


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t_start = time.monotonic()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the Triton kernels are defined: before dlcore imports them
        args.skip_tests = True
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if not args.smoke and not any(os.path.exists(p) for p in _DRIVER_PATHS):
        return _no_gpu("no NVIDIA driver on this machine (no /dev/nvidiactl)")  # answered without importing torch
    if importlib.util.find_spec("torch") is None:
        return _no_gpu("torch is not installed")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        return _no_gpu("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    out_path = args.out if (args.out or args.smoke) else DEFAULT_OUT
    log_path = (os.path.join(os.path.dirname(os.path.abspath(out_path)), "gpu_check_tests.log")
                if out_path else None)

    ok = True
    tests = None
    print("== 1. GPU tests", flush=True)
    if args.skip_tests:
        print("skipped (--skip-tests)" if not args.smoke else "skipped (--smoke)")
    else:
        timeout = args.test_timeout or (90.0 if args.quick else 300.0)
        tests = run_tests(timeout, log_path)
        print(tests.summary, flush=True)
        for f in tests.failures[:20]:
            print("  " + _short(f, 200))
        ok &= tests.ok

    ctx = Ctx(args)
    import dlcore  # noqa: F401  (from the source tree: PYTHONPATH=.)

    print("\n== 2. ceilings", flush=True)
    measure_ceilings(ctx)
    print(f"copy {ctx.copy_gbs or float('nan'):.0f} GB/s, matmul {ctx.matmul_tflops or float('nan'):.1f} TFLOP/s",
          flush=True)

    print("\n== 3. benchmarks", flush=True)
    pattern = re.compile(args.only, re.IGNORECASE) if args.only else None
    rows = []
    broken = None  # why the CUDA context is unusable, once a kernel has broken it
    for case in cases(ctx):
        if args.quick and case.informational:
            continue
        if pattern and not pattern.search(f"{case.kernel} {case.backend} {case.shape}"):
            continue
        target = target_text(case.min_ratio, case.min_share, case.extra_target, "copy BW")
        if broken:
            rows.append(Row(case.kernel, case.backend, case.shape, case.dtype, target=target,
                            error=f"not run: {broken}; rerun with --only to measure this row"))
            continue
        if time.monotonic() - t_start > args.budget - 15:
            rows.append(Row(case.kernel, case.backend, case.shape, case.dtype, target=target,
                            note=f"skipped: past the time budget (--budget {args.budget:.0f} s)"))
            continue
        row = run_case(ctx, case)
        rows.append(row)
        if row.error:
            why = ctx.context_broken()
            if why:
                broken = f"the CUDA context broke after '{case.kernel}' [{case.backend}] failed ({why})"
                print("  " + broken, flush=True)
    ok &= not any(r.error for r in rows)

    header = header_lines(ctx, tests, time.monotonic() - t_start)
    if out_path:
        try:
            write_markdown(out_path, header, rows)
            header.append(f"- written to {out_path}" + (f" (test log: {log_path})" if tests is not None else ""))
        except OSError as exc:
            header.append(f"- could not write {out_path}: {exc}")
            ok = False
    met = sum(r.met is True for r in rows)
    with_target = sum(r.met is not None for r in rows)
    print("\n== 4. results")
    print("\n".join(header))
    print(f"- targets met: {met}/{with_target}; rows with errors: {sum(bool(r.error) for r in rows)}")
    print()
    print(format_table(rows), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
