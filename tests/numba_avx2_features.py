"""Print a NUMBA_CPU_FEATURES string with every AVX-512 feature off, or nothing when Numba's target has none.

`make test` runs the Numba GEMM and attention kernel tests a second time under this string on AVX-512 hosts:
their micro-kernel picks its vector width (and so the packed panel layouts) from the features Numba compiles
for (`kernels.numba.attention._vector_bytes`), so a host with AVX-512 would otherwise never test the AVX2
width that AVX2-only machines run. The feature string is part of Numba's cache key: the two widths never
share cached machine code.

    python -m tests.numba_avx2_features
"""
from dlcore.kernels.numba.attention import numba_target_features


def avx2_features() -> str:
    """The feature string Numba compiles for, AVX-512 switched off; '' when it has no AVX-512 to switch off."""
    flags = numba_target_features()
    if "+avx512f" not in flags:
        return ""
    return ",".join("-" + f[1:] if f.startswith("+avx512") else f for f in flags)


if __name__ == "__main__":
    print(avx2_features())
