"""bench/gpu_check.py on a machine without a GPU: its table, its pytest-summary parsing, and its exit status.

The benchmarks themselves need a CUDA GPU (`make gpu-check`); ``--smoke`` runs one row's code path on the CPU
through the Triton interpreter so the script cannot rot unnoticed here.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from bench import gpu_check as gc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TRITON_INTERPRET", None)
    env.update(extra)
    return env


def _rows():
    ok = gc.Row("matmul", "triton", "4096^3", "bfloat16", ms=0.2, ref_ms=0.19, rate=687.2, unit="TFLOP/s",
                share=0.86, target=gc.target_text(0.9, None))
    gc.evaluate(ok, 0.9, None)
    bw = gc.Row("softmax fwd", "triton", "16384x8192", "bfloat16", ms=0.2, ref_ms=0.3, rate=2684.4, unit="GB/s",
                share=0.9, target=gc.target_text(1.0, 0.8, ceiling="copy BW"), note="out err 2.1e-03")
    gc.evaluate(bw, 1.0, 0.8)
    slow = gc.Row("cross_entropy fwd+bwd", "triton", "8192x128256", "bfloat16", ms=3.0, ref_ms=4.5, rate=1400.0,
                  unit="GB/s", share=0.47, target=gc.target_text(2.0, None, "no fp32 logits buffer"))
    gc.evaluate(slow, 2.0, None, extra_ok=True)
    broken = gc.Row("attention bwd", "triton", "B4 H16 L4096 D128", "bfloat16", target=">=0.8x ref",
                    error="RuntimeError: out of resources | shared memory " + "x" * 200)
    info = gc.Row("matmul", "cupy", "4096^3", "float16", ms=0.25, ref_ms=0.2, rate=550.0, unit="TFLOP/s")
    gc.evaluate(info, None, None)
    return ok, bw, slow, broken, info


def test_table_has_one_line_per_row_and_the_columns():
    rows = _rows()
    table = gc.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["kernel", "backend", "shape", "dtype", "ms", "rate", "% ceiling", "x ref", "target", "met?",
                      "notes"]
    for line in lines:  # a '|' inside a cell (the error text) must not add a column
        assert line.count("|") == len(header) + 1, line


def test_table_cells():
    ok, bw, slow, broken, info = _rows()
    cells = dict(zip(gc.COLUMNS, gc.row_cells(ok)))
    assert cells["ms"] == "0.200" and cells["rate"] == "687.2 TFLOP/s" and cells["% ceiling"] == "86%"
    assert cells["x ref"] == "0.95x" and cells["target"] == ">=0.9x ref" and cells["met?"] == "yes"
    cells = dict(zip(gc.COLUMNS, gc.row_cells(bw)))
    assert cells["rate"] == "2684 GB/s" and cells["x ref"] == "1.50x" and cells["met?"] == "yes"
    assert cells["target"] == ">=80% copy BW, >=1x ref" and cells["notes"] == "out err 2.1e-03"
    cells = dict(zip(gc.COLUMNS, gc.row_cells(slow)))
    assert cells["met?"] == "NO" and cells["target"] == ">=2x ref, no fp32 logits buffer"
    cells = dict(zip(gc.COLUMNS, gc.row_cells(broken)))
    assert cells["met?"] == "ERROR" and cells["ms"] == "-" and cells["x ref"] == "-"
    assert cells["notes"].startswith("ERROR RuntimeError: out of resources") and len(cells["notes"]) <= 70
    assert len(gc.row_cells(broken, note_width=0)[-1]) > 200  # the file keeps the whole message
    cells = dict(zip(gc.COLUMNS, gc.row_cells(info)))
    assert cells["met?"] == "-" and cells["target"] == "-" and cells["x ref"] == "0.80x"


def test_evaluate_needs_every_target():
    r = gc.Row("softmax fwd", "triton", "s", "bfloat16", ms=1.0, ref_ms=1.1, share=0.79)
    gc.evaluate(r, 1.0, 0.8)
    assert r.met is False  # fast enough, but under 80% of the copy bandwidth
    r.share = 0.81
    gc.evaluate(r, 1.0, 0.8)
    assert r.met is True
    gc.evaluate(r, 1.0, 0.8, extra_ok=False)
    assert r.met is False
    r.ms = None  # no timing: a target cannot be met
    gc.evaluate(r, 1.0, None)
    assert r.met is False


def test_markdown_file(tmp_path):
    path = tmp_path / "sub" / "GPU_RESULTS.md"
    gc.write_markdown(str(path), ["- card: NVIDIA H100 80GB HBM3", "- software: torch 2.11.0"], list(_rows()))
    text = path.read_text()
    assert text.startswith("# GPU check")
    assert "- card: NVIDIA H100 80GB HBM3" in text
    assert gc.format_table(list(_rows()), note_width=0) in text
    assert "## Errors" in text and "shared memory " + "x" * 200 in text


def test_pytest_summary_parsing():
    failed = "FAILED tests/kernels/triton/test_attention.py::test_gpu_bf16[causal] - AssertionError: mismatch"
    lines = ["....s..F..", "=========================== short test summary info ============================",
             "SKIPPED [1] tests/kernels/cupy/conftest.py:51: cupy sees no CUDA device", failed,
             "1 failed, 8 passed, 1 skipped, 412 deselected in 41.20s"]
    out = "\n".join(lines)
    summary, failures = gc.parse_pytest_output(out)
    assert summary == "1 failed, 8 passed, 1 skipped, 412 deselected in 41.20s"
    assert failures == [failed]
    assert gc.parse_pytest_output("===== no tests ran in 0.01s =====")[0] == "no tests ran in 0.01s"
    assert gc.TestResult("x", 5).ok and gc.TestResult("x", 0).ok
    assert not gc.TestResult("x", 1).ok and not gc.TestResult("x", None).ok


def test_help_runs_without_torch_work():
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--help"], check=False, cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert "--quick" in p.stdout and "--out" in p.stdout


def test_exits_non_zero_without_a_gpu(tmp_path):
    out = tmp_path / "GPU_RESULTS.md"
    # CUDA_VISIBLE_DEVICES='' hides any GPU, so this holds on a GPU machine too
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out)], check=False,
                       cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=120)
    assert p.returncode == gc.NO_GPU_EXIT, p.stdout + p.stderr
    assert ("no CUDA GPU" in p.stderr or "no NVIDIA driver" in p.stderr) and "make gpu-check" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()  # nothing was run, nothing written


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None,
                    reason="--smoke runs the Triton kernels through the interpreter")
def test_smoke_one_row_end_to_end(tmp_path):
    """--smoke runs steps 2-4 on the CPU: ceilings, a checked and timed row, the table and the file."""
    out = tmp_path / "r.md"
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--only", "^gelu fwd triton",
                        "--out", str(out)], check=False, cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    last = p.stdout.strip().splitlines()
    assert last[-1].startswith("| gelu fwd | triton |"), last[-3:]  # the table is printed last
    assert "out err" in last[-1] and "ERROR" not in last[-1]
    assert "| gelu fwd | triton |" in out.read_text()
