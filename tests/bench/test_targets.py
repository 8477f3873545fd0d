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
