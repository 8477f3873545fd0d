"""`make bench`: run the benchmark suite, then write bench/RESULTS.md and bench/results.png from its JSON.

    python -m bench.run                 # everything
    python -m bench.run -k softmax      # extra arguments go to pytest

Every row: op, shape, dtype, backend, median and interquartile range over rounds, ratio to torch on the
same inputs in the same process, achieved GB/s or GFLOP/s, and the share of this machine's measured
limit (copy bandwidth or fp32 matmul peak, measured in the same run).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JSON = os.path.join(HERE, "results.json")
LIMITS = os.path.join(HERE, "limits.json")
MD = os.path.join(HERE, "RESULTS.md")
PNG = os.path.join(HERE, "results.png")


def run_pytest(extra):
    cmd = [sys.executable, "-m", "pytest", HERE, "-q", "-p", "no:cacheprovider",
           "-o", "python_files=bench_*.py", "-o", "python_functions=bench_*",
           "--benchmark-only", f"--benchmark-json={JSON}", "--benchmark-columns=median,iqr,rounds",
           "--benchmark-sort=name", *extra]
    env = {**os.environ, "DLCORE_BENCH_LIMITS": LIMITS}
    return subprocess.call(cmd, cwd=ROOT, env=env)


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    import numpy
    import torch

    import dlcore

    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": dlcore.get_num_threads(), "torch": torch.__version__,
        "numba": numba.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
        "date": datetime.date.today().isoformat(), "commit": commit,
    }


def rows_from_json():
    with open(JSON) as f:
        data = json.load(f)
    rows = []
    for b in data["benchmarks"]:
        info, st = b["extra_info"], b["stats"]
        rows.append(dict(info, median=st["median"], iqr=st["iqr"], rounds=st["rounds"]))
    torch_time = {(r["op"], r["shape"], r["dtype"]): r["median"] for r in rows
                  if r["backend"] in ("torch", "torch-fused")}
    for r in rows:
        t = torch_time.get((r["op"], r["shape"], r["dtype"]))
        r["vs_torch"] = t / r["median"] if t else None
        if r.get("bytes"):
            r["rate"] = r["bytes"] / r["median"] / 1e9
            r["unit"] = "GB/s"
        else:
            r["rate"] = r["flops"] / r["median"] / 1e9
            r["unit"] = "GFLOP/s"
        r["share"] = r["rate"] / r["limit"]
    return rows


def write_markdown(rows, machine, limits):
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py); do not edit by hand. Medians over rounds in one process, the",
        "same inputs for every backend, outputs checked against torch before timing. `x torch` > 1 means",
        "faster than torch (for optimizers: torch `fused=True`). Share = achieved rate / this machine's limit.",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads for Numba and torch",
        f"- software: Python {machine['python']}, torch {machine['torch']}, numba {machine['numba']}, "
        f"numpy {machine['numpy']}",
        f"- date {machine['date']}, commit {machine['commit']}",
        f"- limits measured in this run: copy bandwidth {limits['bandwidth_gbs']:.1f} GB/s (numpy copy "
        f"{limits['bandwidth_numpy_copy_gbs']:.1f}, parallel copy {limits['bandwidth_parallel_copy_gbs']:.1f}); "
        f"fp32 matmul peak {limits['matmul_gflops']:.0f} GFLOP/s (numpy {limits['matmul_numpy_gflops']:.0f}, "
        f"torch {limits['matmul_torch_gflops']:.0f})",
        "",
        "| op | shape | dtype | backend | median ms | IQR ms | x torch | rate | share of limit |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        vs = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['backend']} | {r['median'] * 1e3:.2f} | "
            f"{r['iqr'] * 1e3:.2f} | {vs} | {r['rate']:.1f} {r['unit']} | {100 * r['share']:.0f}% |"
        )
    lines += ["", "![speed-up over torch](results.png)", ""]
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    with open(MD, "w") as f:
        f.write("\n".join(lines))


def write_chart(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r["backend"] in ("numba", "numpy") and r["vs_torch"]]
    labels = sorted({(r["op"], r["shape"]) for r in ours}, key=lambda k: k[0])
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(labels) + 1.5))
    y = range(len(labels))
    for off, backend, color in ((-0.2, "numba", "tab:blue"), (0.2, "numpy", "tab:gray")):
        vals = [next((r["vs_torch"] for r in ours if (r["op"], r["shape"]) == lab and r["backend"] == backend), 0)
                for lab in labels]
        ax.barh([i + off for i in y], vals, height=0.4, color=color, label=f"dlcore {backend}")
    ax.axvline(1.0, color="k", lw=1, ls="--")
    ax.set_yticks(list(y))
    ax.set_yticklabels([f"{op} {shape}" for op, shape in labels], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over torch (log scale; > 1 is faster)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)


def main(argv):
    rc = run_pytest(argv)
    if not os.path.exists(JSON):
        return rc or 1
    rows = rows_from_json()
    with open(LIMITS) as f:
        limits = json.load(f)
    write_markdown(rows, _machine(), limits)
    write_chart(rows)
    print(open(MD).read())
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
