"""bench/targets.py: verdicts from benchmark rows (ratios, best-of references, shares, missing rows)."""
from bench.targets import Target, evaluate, markdown


def _row(op, backend, median, shape="(8,)", share=0.5):
    return {"op": op, "shape": shape, "backend": backend, "median": median, "share": share}


def test_ratio_share_best_of_and_missing():
    rows = [_row("softmax fwd", "numba", 1.0, share=0.7), _row("softmax fwd", "torch", 3.5),
            _row("matmul", "numba", 1.0), _row("matmul", "numpy", 0.9), _row("matmul", "torch", 1.2)]
    targets = [Target("softmax fwd", 3.0), Target("softmax fwd", 0.6, "limit"),
               Target("matmul", 0.95, ("numpy", "torch")), Target("absent op", 1.0)]
    v = evaluate(rows, targets)
    assert [x["met"] for x in v] == [True, True, False, None]
    assert abs(v[0]["measured"] - 3.5) < 1e-12 and abs(v[2]["measured"] - 0.9) < 1e-12
    text = "\n".join(markdown(v))
    assert "3.50x" in text and "70%" in text and "0.90x" in text and "not measured" in text


def test_every_shape_of_an_op_gets_its_own_verdict():
    rows = [_row("mse", "numba", 1.0, "(1,)"), _row("mse", "torch", 2.5, "(1,)"),
            _row("mse", "numba", 1.0, "(2,)"), _row("mse", "torch", 1.5, "(2,)")]
    v = evaluate(rows, [Target("mse", 2.0)])
    assert [(x["shape"], x["met"]) for x in v] == [("(1,)", True), ("(2,)", False)]


def test_interleaved_ratio_is_used_when_the_row_has_one():
    """A row with ``paired`` ratios (timed back to back) is judged on them; the row-median ratio is shown
    beside; a paired dict missing one of a best-of target's references falls back to the medians."""
    ours = dict(_row("matmul", "numba", 1.0), paired={"numpy": 0.97, "torch": 1.10})
    rows = [ours, _row("matmul", "numpy", 0.8), _row("matmul", "torch", 1.2),
            dict(_row("gelu", "numba", 1.0), paired={"torch": 2.1}), _row("gelu", "torch", 1.5)]
    v = evaluate(rows, [Target("matmul", 0.95, ("numpy", "torch")), Target("gelu", 2.0),
                        Target("matmul", 0.95, ("numpy", "torch", "absent"))])
    assert [x["met"] for x in v] == [True, True, False]
    assert abs(v[0]["measured"] - 0.97) < 1e-12 and abs(v[0]["blocks"] - 0.8) < 1e-12
    assert abs(v[1]["measured"] - 2.1) < 1e-12 and abs(v[1]["blocks"] - 1.5) < 1e-12
    assert abs(v[2]["measured"] - 0.8) < 1e-12  # 'absent' has no paired time: the medians decide
    text = "\n".join(markdown(v))
    assert "| 0.97x | 0.80x | yes |" in text and "| 2.10x | 1.50x | yes |" in text


def test_interleaved_ratios_alternate_and_use_medians(monkeypatch):
    """conftest.interleaved_ratios times every side each round, after an idle gap, short calls as a warmed
    block, alternating which side goes first, and reports median(ref) / median(ours)."""
    import itertools
    import time

    import bench.conftest as bc

    monkeypatch.setattr(bc, "_IDLE_GAP_S", 0.01)
    calls = []

    def ours():
        calls.append("ours")
        time.sleep(0.002)

    def ref():
        calls.append("ref")
        time.sleep(0.006)

    t0 = time.perf_counter()
    r = bc.interleaved_ratios(ours, {"ref": ref}, rounds=3)
    elapsed = time.perf_counter() - t0
    # warm-up (one call each), then max(rounds, 5) = 5 rounds; in each, a side's turn is an untimed call and
    # a block of ceil(_BLOCK_S / warm-up time) timed calls (< 10 for ours, < 4 for ref at these sleeps)
    runs = [(name, len(list(group))) for name, group in itertools.groupby(calls)]
    assert runs[:2] == [("ours", 1), ("ref", 1)]
    turns = runs[2:]  # rounds alternate: ours, ref | ref, ours | ours, ref ... (adjacent same-side turns merge)
    assert [name for name, _ in turns] == ["ours", "ref", "ours", "ref", "ours", "ref"]
    assert 5 * 2 <= calls.count("ours") - 1 <= 5 * 11 and 5 * 2 <= calls.count("ref") - 1 <= 5 * 5
    assert elapsed >= 10 * 0.01  # one idle gap before each of the 10 turns
    assert 1.5 < r["ref"] < 6


def test_limit_share_beside_the_kernel_is_used_when_the_row_has_one():
    """A memory-bound row timed beside a copy of its bytes (``paired['copy']`` = copy time / kernel time) is
    judged on that share; the run-wide probe's share is shown as the row-medians figure."""
    rows = [dict(_row("softmax fwd", "numba", 1.0, share=0.47), paired={"torch": 3.1, "copy": 0.71}),
            _row("softmax fwd", "torch", 3.0), _row("log_softmax fwd", "numba", 1.0, share=0.65)]
    v = evaluate(rows, [Target("softmax fwd", 0.6, "limit"), Target("log_softmax fwd", 0.6, "limit"),
                        Target("softmax fwd", 3.0)])
    assert [x["met"] for x in v] == [True, True, True]
    assert abs(v[0]["measured"] - 0.71) < 1e-12 and abs(v[0]["blocks"] - 0.47) < 1e-12
    assert abs(v[1]["measured"] - 0.65) < 1e-12  # no paired copy: the run-wide share decides
    assert abs(v[2]["measured"] - 3.1) < 1e-12  # the copy side is not a reference of ratio targets
    text = "\n".join(markdown(v))
    assert "| 71% | 47% | yes |" in text and "| 65% | 65% | yes |" in text


def test_copy_probe_moves_the_bytes_it_is_given():
    """bench/_limits.copy_probe(n): a parallel copy of n / 2 bytes (n moved, read + write counted)."""
    import numpy as np

    from bench._limits import copy_probe

    probe = copy_probe(16 * 1000)
    cell = probe.__closure__  # the callable holds its two float64 arrays of 1000 elements
    arrays = [c.cell_contents for c in cell if isinstance(c.cell_contents, np.ndarray)]
    assert sorted(a.nbytes for a in arrays) == [8000, 8000]
    probe()
    assert np.array_equal(arrays[0], arrays[1])
