"""Every CuPy backend module defines the contract's functions with the contract's argument names, in order.

The contract is read from kernels/README.md (each ``### `module.py``` section's backticked signatures) and the
modules are parsed with ``ast``, so neither CuPy nor a GPU is needed.
"""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
README = os.path.join(ROOT, "kernels", "README.md")
BACKEND = os.path.join(ROOT, "kernels", "cupy")


def _contract() -> dict[str, dict[str, list[str]]]:
    """{module: {function: [arg names]}} from the README's contract sections."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    out: dict[str, dict[str, list[str]]] = {}
    sections = re.split(r"^### `(\w+)\.py`", text, flags=re.MULTILINE)
    for name, body in zip(sections[1::2], sections[2::2]):
        body = body.split("\n## ")[0]
        funcs = {}
        for fn, args in re.findall(r"`(\w+)\(([^)`]*)\)", body):
            funcs[fn] = [a.strip() for a in args.split(",") if a.strip()]
        out[name] = funcs
    return out


CONTRACT = _contract()


def test_contract_parsed():
    assert set(CONTRACT) >= {"matmul", "softmax", "activations", "layer_norm", "mse", "bce", "cross_entropy",
                             "attention", "optimizers"}
    assert CONTRACT["softmax"]["softmax_forward"] == ["x"]
    assert CONTRACT["optimizers"]["adam_step"][-1] == "decoupled"


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_module_defines_contract(module):
    path = os.path.join(BACKEND, f"{module}.py")
    assert os.path.isfile(path), f"kernels/cupy/{module}.py is missing"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    defined = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for fn, args in CONTRACT[module].items():
        assert fn in defined, f"kernels/cupy/{module}.py lacks {fn}"
        node = defined[fn]
        got = [a.arg for a in node.args.posonlyargs + node.args.args]
        assert got == args, f"{module}.{fn}{tuple(got)} differs from the contract's {tuple(args)}"
        doc = ast.get_docstring(node)
        assert doc and "Returns" in doc, f"{module}.{fn} needs a Google-style docstring with Returns"


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_module_does_not_import_cupy_at_top(module):
    """CuPy is imported inside functions (via _source.cupy()), so importing a module never needs it."""
    with open(os.path.join(BACKEND, f"{module}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "cupy" for a in node.names), f"{module} imports cupy at top"
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "cupy", f"{module} imports from cupy at top"
