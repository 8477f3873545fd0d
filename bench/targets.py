"""The performance targets of the CPU issues, checked against the rows of a `make bench` run.

Each target names a benchmark row (op, optionally shape) of dlcore's backend and what it must reach:
a speed ratio against a reference backend measured in the same run (``ref``: one backend, or a tuple whose
fastest member counts, as in "never below 0.95x the faster of numpy and torch"), or a share of the machine's
limit (copy bandwidth or fp32 matmul peak, also measured in the run; a memory-bound row's share is taken
against a copy of the same bytes timed in the same rounds when it has one). A ratio is taken from the row's
interleaved measurement (``paired``: dlcore and the reference timed back to back in one loop, see
bench/conftest.py) when the row has one, else from the two rows' medians, which are timed minutes apart;
the table shows both. `evaluate` turns rows into a list of
verdicts that bench/run.py writes into RESULTS.md; a target whose row is missing is reported as such,
never silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench._limits import PAIRED_COPY


@dataclass(frozen=True)
class Target:
    op: str
    minimum: float
    ref: str | tuple = "torch"  # backend(s) to compare with, or "limit" for the share of the machine limit
    shape: str | None = None  # None: every shape benchmarked for the op
    ours: str = "numba"
    source: str = "issue 3"

    def describe(self):
        if self.ref == "limit":
            return f">= {self.minimum:.0%} of the limit"
        ref = " / ".join(self.ref) if isinstance(self.ref, tuple) else self.ref
        best = "the faster of " if isinstance(self.ref, tuple) else ""
        return f">= {self.minimum:g}x {best}{ref}"


_BEST_BLAS = ("numpy", "torch")

TARGETS = [
    *(Target(f"{name} fwd", 3.0) for name in ("softmax", "log_softmax")),
    *(Target(f"{name} fwd", 0.6, "limit") for name in ("softmax", "log_softmax")),
    *(Target(f"{name} bwd", 2.0) for name in ("softmax", "log_softmax")),
    Target("cross_entropy fwd+bwd", 8.0),
    Target("cross_entropy fwd+bwd", 0.4, "limit"),
    Target("bce_with_logits fwd+bwd", 2.0),
    Target("mse_loss fwd+bwd", 2.0),
    Target("layer_norm fwd+bwd", 2.0),
    Target("gelu(none) fwd+bwd", 2.0),
    Target("gelu(tanh) fwd+bwd", 2.0),
    *(Target(f"{kind} step", 1.2, "torch-fused") for kind in ("adamw", "adam", "sgd")),
    *(Target(f"{kind} step", 4.0, "torch-foreach") for kind in ("adamw", "adam", "sgd")),
    Target("sdpa fwd", 1.2),
    Target("sdpa fwd causal", 1.2),
    Target("sdpa fwd+bwd", 1.0),
    Target("sdpa fwd+bwd causal", 1.0),
    Target("matmul", 0.95, _BEST_BLAS),
    Target("linear", 0.95, _BEST_BLAS),
    Target("matmul", 0.6, _BEST_BLAS, ours="numba-gemm"),
    Target("linear_act gelu", 1.2),
    Target("train step transformer LM", 1.3, source="issue 5"),
    Target("train step MLP", 1.0, source="issue 5"),
    Target("train step transformer LM (torch.patch)", 1.2, ours="dlcore.torch", source="issue 5"),
]


def _median(rows, op, shape, backend):
    for r in rows:
        if r["op"] == op and r["shape"] == shape and r["backend"] == backend:
            return r["median"]
    return None


def evaluate(rows, targets=TARGETS):
    """One verdict dict per (target, shape): target, shape, measured (ratio or share), met (bool or None)."""
    verdicts = []
    for t in targets:
        shapes = sorted({r["shape"] for r in rows if r["op"] == t.op and r["backend"] == t.ours
                         and (t.shape is None or r["shape"] == t.shape)})
        if not shapes:
            verdicts.append({"target": t, "shape": t.shape or "-", "measured": None, "met": None})
            continue
        for shape in shapes:
            ours = next(r for r in rows if r["op"] == t.op and r["shape"] == shape and r["backend"] == t.ours)
            if t.ref == "limit":
                # the share against a copy of the same bytes timed in the same rounds (bench/_limits.copy_probe)
                # when the row has one; the run-wide probe's share goes in the row-medians column
                blocks = ours["share"]
                measured = (ours.get("paired") or {}).get(PAIRED_COPY, blocks)
            else:
                refs = t.ref if isinstance(t.ref, tuple) else (t.ref,)
                times = [m for m in (_median(rows, t.op, shape, b) for b in refs) if m is not None]
                blocks = min(times) / ours["median"] if times else None
                paired = ours.get("paired") or {}
                if all(b in paired for b in refs):  # interleaved in one loop (bench/conftest.interleaved_ratios)
                    measured = min(paired[b] for b in refs)
                else:
                    measured = blocks
            met = None if measured is None else measured >= t.minimum
            verdicts.append({"target": t, "shape": shape, "measured": measured, "met": met, "blocks": blocks})
    return verdicts


def markdown(verdicts):
    """The verdicts as a Markdown table (one line per target and shape)."""
    lines = ["| source | op | shape | target | measured | row medians | met |",
             "| --- | --- | --- | --- | ---: | ---: | :---: |"]
    for v in verdicts:
        t = v["target"]
        if v.get("blocks") is None:
            blocks = "-"
        else:
            blocks = f"{v['blocks']:.0%}" if t.ref == "limit" else f"{v['blocks']:.2f}x"
        if v["measured"] is None:
            measured, met = "not measured", "?"
        elif t.ref == "limit":
            measured, met = f"{v['measured']:.0%}", "yes" if v["met"] else "**no**"
        else:
            measured, met = f"{v['measured']:.2f}x", "yes" if v["met"] else "**no**"
        who = "" if t.ours == "numba" else f" ({t.ours})"
        lines.append(f"| {t.source} | {t.op}{who} | {v['shape']} | {t.describe()} | {measured} | {blocks} | {met} |")
    return lines
