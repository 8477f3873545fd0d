"""Cold start: `import dlcore` time and each op's first-call time, with an empty Numba cache (cold) and
again in a fresh process that finds the on-disk cache (warm).

    python -m bench.cold_start            # prints a Markdown table

Each measurement runs in its own Python process; NUMBA_CACHE_DIR points at a temporary folder so the
cold run really compiles everything and the warm run only loads machine code.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PROBE = r'''
import json, time, sys
t0 = time.perf_counter()
import dlcore
t_import = time.perf_counter() - t0
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 33)).astype(np.float32)
q = rng.standard_normal((2, 16, 8)).astype(np.float32)
t = rng.integers(0, 33, 64)
p = rng.standard_normal(1000).astype(np.float32)
t0 = time.perf_counter()
import dlcore.kernels.numba  # numba itself and its threading layer: paid once, by the first op
t_numba = time.perf_counter() - t0
from dlcore import ops
calls = {
    "softmax": lambda: ops.softmax(x),
    "log_softmax": lambda: ops.log_softmax(x),
    "cross_entropy": lambda: ops.cross_entropy(x, t),
    "binary_cross_entropy_with_logits": lambda: ops.binary_cross_entropy_with_logits(x, np.abs(np.tanh(x))),
    "mse_loss": lambda: ops.mse_loss(x, x * 2),
    "layer_norm": lambda: ops.layer_norm(x, (33,)),
    "gelu": lambda: ops.gelu(x),
    "relu": lambda: ops.relu(x),
    "silu": lambda: ops.silu(x),
    "matmul": lambda: ops.matmul(x, x.T),
    "linear": lambda: ops.linear(x, x),
    "scaled_dot_product_attention": lambda: ops.scaled_dot_product_attention(q, q, q),
    "adamw_": lambda: ops.adamw_(p, p * 0.1, np.zeros_like(p), np.zeros_like(p), step=1, lr=1e-3),
    "sgd_": lambda: ops.sgd_(p, p * 0.1, lr=1e-3, momentum=0.9),
}
first = {}
for name, fn in calls.items():
    t0 = time.perf_counter(); fn(); first[name] = time.perf_counter() - t0
json.dump({"import": t_import, "numba": t_numba, "first": first}, sys.stdout)
'''


def _probe(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out)


def main():
    with tempfile.TemporaryDirectory() as cache:
        cold = _probe(cache)
        warm = _probe(cache)
    print(f"import dlcore: {cold['import'] * 1e3:.0f} ms (cold), {warm['import'] * 1e3:.0f} ms (warm); "
          f"import numba on first use: {cold['numba'] * 1e3:.0f} ms / {warm['numba'] * 1e3:.0f} ms\n")
    print("| op | first call, empty cache | first call, warm cache |")
    print("| --- | ---: | ---: |")
    for name in cold["first"]:
        print(f"| {name} | {cold['first'][name] * 1e3:.0f} ms | {warm['first'][name] * 1e3:.1f} ms |")
    print(f"| **total** | {sum(cold['first'].values()):.1f} s | {sum(warm['first'].values()) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
