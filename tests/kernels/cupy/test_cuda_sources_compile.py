"""The CuPy backend's CUDA code compiles with nvcc for Hopper (sm_90), with no GPU and no CuPy needed.

* every ``kernels/cupy/cuda/*.cu``, as NVRTC will see it (``_source.source`` pastes common.cuh in), once per
  dtype macro: float32, float64 and float16;
* every ElementwiseKernel body, wrapped in a generated ``__global__`` with CuPy's parameter binding (inputs by
  value, outputs by reference, raw arrays as pointers), for T = float and T = double.

Skipped when nvcc is not installed.
"""
from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import subprocess

import pytest

from tests.kernels.cupy.emu.fake_cupy import elementwise_source

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CUDA_DIR = os.path.join(ROOT, "kernels", "cupy", "cuda")
CU_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CUDA_DIR, "*.cu")))
DTYPE_MACROS = ["DL_DTYPE_FLOAT32", "DL_DTYPE_FLOAT64", "DL_DTYPE_FLOAT16"]
MODULES = ["softmax", "activations", "layer_norm", "mse", "bce", "cross_entropy", "optimizers", "matmul",
           "attention"]


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in ["/usr/local/cuda/bin/nvcc", *sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)]:
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, /usr/local/cuda*/bin)")


def _source_module():
    import dlcore  # noqa: F401  (installs the dlcore.kernels alias)

    return importlib.import_module("dlcore.kernels.cupy._source")


def _compile(code: str, tmp_path, name: str, defines=(), extra=()):
    src = tmp_path / f"{name}.cu"
    src.write_text(code)
    cmd = [NVCC, "-std=c++17", "-arch=sm_90", *[f"-D{d}" for d in defines], *extra, "-cubin",
           "-o", str(tmp_path / f"{name}.cubin"), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def test_there_are_cuda_sources():
    assert {"softmax.cu", "layer_norm.cu", "cross_entropy.cu", "attention.cu", "reduce.cu"} <= set(CU_FILES)


@needs_nvcc
@pytest.mark.parametrize("macro", DTYPE_MACROS)
@pytest.mark.parametrize("cu", CU_FILES)
def test_cu_file_compiles(cu, macro, tmp_path):
    code = _source_module().source(cu)
    assert not re.search(r"^\s*#\s*include", code, re.MULTILINE), "NVRTC gets no include path: paste every include in"
    _compile(code, tmp_path, cu[:-3], [macro])


@needs_nvcc
def test_attention_accumulators_stay_in_registers(tmp_path):
    """The per-lane output accumulators are indexed by unrolled constants only: no local-memory stack."""
    code = _source_module().source("attention.cu")
    log = _compile(code, tmp_path, "attention_v", ["DL_DTYPE_FLOAT32"], ["-Xptxas", "-v"])
    frames = [int(n) for n in re.findall(r"(\d+) bytes stack frame", log)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
    assert frames and max(frames) == 0 and max(spills) == 0, log


def _elementwise_specs():
    src = _source_module()
    for m in MODULES:
        importlib.import_module(f"dlcore.kernels.cupy.{m}")
    return list(src.ELEMENTWISE)


def test_every_module_imports_without_cupy():
    """Importing a backend module must not import CuPy (it is imported inside the functions)."""
    import sys

    had = "cupy" in sys.modules
    specs = _elementwise_specs()
    assert specs, "no ElementwiseKernel specs found"
    if not had:
        assert "cupy" not in sys.modules


@needs_nvcc
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_elementwise_bodies_compile(ctype, tmp_path):
    specs = _elementwise_specs()
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), f"duplicate ElementwiseKernel names: {names}"
    # CuPy's generated code defines a float16 class; a stub is enough when T is float or double. Each
    # kernel goes in a namespace of its own so that the preambles' definitions do not collide.
    parts = ["struct float16 { unsigned short bits_; };"]
    for spec in specs:
        parts.append(f"namespace ns_{spec.name} {{")
        parts.append(elementwise_source(spec.in_params, spec.out_params, spec.operation, spec.preamble,
                                        {"T": ctype}, "cuda", name=f"chk_{spec.name}", extern_c=False))
        parts.append(f"}}  // namespace ns_{spec.name}")
    _compile("\n".join(parts), tmp_path, f"elementwise_{ctype}")


@needs_nvcc
@pytest.mark.parametrize("ctype,vector_load", [("float", "ld.global.v4.f32"), ("double", "ld.global.v2.f64")])
def test_elementwise_16_byte_twins_compile_to_vector_accesses(ctype, vector_load, tmp_path):
    """Every ElementwiseKernel without raw params has a 16-byte twin (`_source.Elementwise.vector_source`):
    one NVRTC-ready source each, and its PTX really loads and stores 16 bytes at a time."""
    specs = [s for s in _elementwise_specs() if s.vector_source(ctype) is not None]
    assert {"dl_gelu_erf_fwd", "dl_relu_bwd", "dl_silu_fwd", "dl_adam", "dl_sgd_momentum"} <= {s.name for s in specs}
    for spec in specs:
        code = spec.vector_source(ctype)
        assert not re.search(r"^\s*#\s*include", code, re.MULTILINE)
        src = tmp_path / f"{spec.name}.cu"
        src.write_text(code)
        ptx = tmp_path / f"{spec.name}.ptx"
        res = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "-ptx", "-o", str(ptx), str(src)],
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, f"{spec.name}:\n{res.stderr}"
        text = ptx.read_text()
        assert vector_load in text, f"{spec.name}: no 16-byte load in the PTX"
        assert vector_load.replace("ld.", "st.") in text, f"{spec.name}: no 16-byte store in the PTX"


def test_vector_twin_reads_outputs_only_when_the_body_does():
    """A pure output is not loaded (one write per element); an in-place one (Adam's param) is."""
    src = _source_module()
    relu = next(s for s in _elementwise_specs() if s.name == "dl_relu_fwd")
    adam = next(s for s in _elementwise_specs() if s.name == "dl_adam")
    assert "_P _y;" in relu.vector_source("float")
    code = adam.vector_source("float")
    for n in ("param", "exp_avg", "exp_avg_sq"):
        assert f"_P _{n} = reinterpret_cast<const _P*>(_p_{n})[_v];" in code
    assert not src._reads("y = x == T(0) ? T(1) : x;", "y") and src._reads("y = y + x;", "y")
    assert src._reads("if (y == T(0)) y = x;", "y")
