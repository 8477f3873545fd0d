"""`make bench`: run the benchmark suite, then write bench/RESULTS.md and bench/results.png from its JSON.

    python -m bench.run                 # everything
    python -m bench.run -k softmax      # extra arguments go to pytest
    python -m bench.run --one-pass      # skip the second, single-thread pass
    python -m bench.run --report-only   # rewrite RESULTS.md and the chart from the last run's JSON (no timing)
    python -m bench.run --single-thread-only   # redo only the single-thread pass, then rewrite RESULTS.md

Every row: op, shape, dtype, backend, median and interquartile range over rounds, ratio to torch on the
same inputs in the same process, the floor (bytes or FLOPs over the measured limit), achieved GB/s or
GFLOP/s and the share of this machine's measured limit (copy bandwidth or fp32 matmul peak, measured in
the same run). Then the targets of the performance issues (bench/targets.py), met or not, and a second
pass of dlcore's and torch's rows with one thread (NUMBA_NUM_THREADS=1, torch.set_num_threads(1)) to show
how each kernel scales.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

from bench._limits import PAIRED_COPY

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JSON = os.path.join(HERE, "results.json")
JSON_1T = os.path.join(HERE, "results-1thread.json")
LIMITS = os.path.join(HERE, "limits.json")
LIMITS_1T = os.path.join(HERE, "limits-1thread.json")
MACHINE = os.path.join(HERE, "machine.json")  # who ran the last timing run: reused by --report-only
MD = os.path.join(HERE, "RESULTS.md")
PNG = os.path.join(HERE, "results.png")


def run_pytest(extra, json_path=JSON, env_extra=None, limits_path=LIMITS):
    cmd = [sys.executable, "-m", "pytest", HERE, "-q", "-p", "no:cacheprovider",
           "-o", "python_files=bench_*.py", "-o", "python_functions=bench_*",
           "--benchmark-only", f"--benchmark-json={json_path}", "--benchmark-columns=median,iqr,rounds",
           "--benchmark-sort=name", *extra]
    env = {**os.environ, "DLCORE_BENCH_LIMITS": limits_path, **(env_extra or {})}
    return subprocess.call(cmd, cwd=ROOT, env=env)


# The single-thread pass: dlcore's Numba rows and torch's, not the slow NumPy references. Every pool is
# limited: Numba's, torch's (conftest follows Numba's count) and the BLAS libraries' (np.matmul's OpenBLAS
# does not read NUMBA_NUM_THREADS).
SINGLE_THREAD_SELECTION = ["-k", "not numpy"]
SINGLE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1"}


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
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def rows_from_json(path=JSON):
    with open(path) as f:
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
        r["floor"] = r["median"] * r["share"]  # seconds at exactly the limit
    return rows


def _thread_lines(rows, rows_1t, threads):
    """Numba and torch medians at 1 thread and at `threads`, and the speed-up the second thread gives."""
    one = {(r["op"], r["shape"], r["backend"]): r["median"] for r in rows_1t}
    lines = [
        f"## One thread vs {threads}",
        "",
        "The same rows rerun with one thread on both sides (`NUMBA_NUM_THREADS=1`, `OPENBLAS_NUM_THREADS=1`,",
        "`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`): the scaling column is what the second core buys.",
        "",
        f"| op | shape | backend | 1 thread ms | {threads} threads ms | scaling | x torch (1 thread) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    torch_1t = {(r["op"], r["shape"]): r["median"] for r in rows_1t if r["backend"] in ("torch", "torch-fused")}
    for r in rows:
        key = (r["op"], r["shape"], r["backend"])
        if key not in one or r["backend"] == "numpy":
            continue
        t1 = one[key]
        ref = torch_1t.get((r["op"], r["shape"]))
        vs = f"{ref / t1:.2f}" if ref else "-"
        lines.append(f"| {r['op']} | {r['shape']} | {r['backend']} | {t1 * 1e3:.2f} | {r['median'] * 1e3:.2f} | "
                     f"{t1 / r['median']:.2f}x | {vs} |")
    return lines + [""]


def write_markdown(rows, machine, limits, rows_1t=None):
    from bench.targets import evaluate, markdown

    verdicts = evaluate(rows)
    n_met = sum(v["met"] is True for v in verdicts)
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py); do not edit by hand. Medians over rounds in one process, the",
        "same inputs for every backend, outputs checked against torch before timing. `x torch` > 1 means",
        "faster than torch (for optimizers: torch `fused=True`). Floor = the time at exactly this machine's",
        "limit (bytes moved / copy bandwidth, or FLOPs / fp32 matmul peak); share = floor / median.",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads for Numba and torch",
        (f"- software: Python {machine['python']}, torch {machine['torch']}, numba {machine['numba']}, "
        f"numpy {machine['numpy']}"),
        f"- date {machine['date']}, commit {machine['commit']}, load average at the end {machine['load']}",
        (f"- limits measured in this run: copy bandwidth {limits['bandwidth_gbs']:.1f} GB/s (numpy copy "
        f"{limits['bandwidth_numpy_copy_gbs']:.1f}, parallel copy {limits['bandwidth_parallel_copy_gbs']:.1f}); "
        f"fp32 matmul peak {limits['matmul_gflops']:.0f} GFLOP/s (numpy {limits['matmul_numpy_gflops']:.0f}, "
        f"torch {limits['matmul_torch_gflops']:.0f})"),
        "",
        f"## Targets ({n_met} of {len(verdicts)} met)",
        "",
        "From the performance issues (bench/targets.py); a missed one is explained in the notes at the end.",
        "`measured`: for a speed ratio, dlcore and the reference timed back to back in one loop, alternating",
        "which goes first, each turn after 0.15 s idle (medians of 5-15 rounds, bench/conftest.interleaved_ratios), so the VM's drift",
        "over minutes hits both sides alike; `row medians`: the same ratio from the two rows of the table",
        "below, each timed in its own block. For a share of copy bandwidth, `measured` is a copy of the same",
        "bytes timed in the same rounds (bench/_limits.copy_probe: median copy time / median kernel time) and",
        "`row medians` the row's median against the run-wide copy probe above.",
        "",
        *markdown(verdicts),
        "",
        "## All rows",
        "",
        "`share beside`: the share against a copy of the same bytes timed in the same rounds (memory-bound",
        "dlcore rows with an interleaved measurement).",
        "",
        ("| op | shape | dtype | backend | median ms | IQR ms | floor ms | x torch | rate | share of limit | "
         "share beside |"),
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        vs = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        beside = (r.get("paired") or {}).get(PAIRED_COPY)
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['backend']} | {r['median'] * 1e3:.2f} | "
            f"{r['iqr'] * 1e3:.2f} | {r['floor'] * 1e3:.2f} | {vs} | {r['rate']:.1f} {r['unit']} | "
            f"{100 * r['share']:.0f}% | {'-' if beside is None else f'{100 * beside:.0f}%'} |"
        )
    lines += ["", "![speed-up over torch](results.png)", ""]
    if rows_1t:
        lines += _thread_lines(rows, rows_1t, machine["threads"])
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read()]
    gpu = os.path.join(HERE, "GPU_RESULTS.md")  # the last `make gpu-check` table (a GPU machine's run)
    if os.path.exists(gpu):
        with open(gpu) as f:
            lines += ["", "---", "", f.read().replace("# GPU check", "# GPU check (bench/GPU_RESULTS.md)", 1)]
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
    one_pass = "--one-pass" in argv
    report_only = "--report-only" in argv
    single_only = "--single-thread-only" in argv
    argv = [a for a in argv if a not in ("--one-pass", "--report-only", "--single-thread-only")]
    rc = 0 if (report_only or single_only) else run_pytest(argv)
    if not os.path.exists(JSON):
        return rc or 1
    if not (one_pass or report_only):
        rc = run_pytest([*argv, *SINGLE_THREAD_SELECTION], JSON_1T, SINGLE_THREAD_ENV, LIMITS_1T) or rc
    rows_1t = rows_from_json(JSON_1T) if not one_pass and os.path.exists(JSON_1T) else None
    rows = rows_from_json()
    with open(LIMITS) as f:
        limits = json.load(f)
    if (report_only or single_only) and os.path.exists(MACHINE):
        with open(MACHINE) as f:
            machine = json.load(f)
    else:
        machine = _machine()
        with open(MACHINE, "w") as f:
            json.dump(machine, f, indent=1)
    write_markdown(rows, machine, limits, rows_1t)
    write_chart(rows)
    with open(MD) as f:
        print(f.read())
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
