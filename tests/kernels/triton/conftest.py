"""Triton test set-up: skip ``gpu``-marked tests without CUDA; quiet the interpreter's NumPy warnings.

The interpreter evaluates masked-off lanes too (exp(-inf - -inf), log(0)), and NumPy warns about them;
those values are never stored, so the warnings say nothing about results.
"""
import pytest

_QUIET = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.*")


def pytest_collection_modifyitems(config, items):
    mine = [i for i in items if "kernels/triton" in str(i.fspath).replace("\\", "/")]
    for item in mine:
        item.add_marker(_QUIET)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in mine:
        if "gpu" in item.keywords:
            item.add_marker(skip)
