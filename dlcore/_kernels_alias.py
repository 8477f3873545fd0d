"""Make the repository's top-level ``kernels/`` folder importable as ``dlcore.kernels``.

Installed from a wheel, ``kernels/`` is packaged as ``dlcore/kernels`` (see ``pyproject.toml``) and this
module does nothing. Run from a source tree (``PYTHONPATH=.`` on a GPU box, or an editable install), the
folder sits beside ``dlcore/``; we register it under dlcore's namespace so that the name ``kernels``, which
belongs to another project on PyPI, is never claimed at top level.
"""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def install() -> None:
    if "dlcore.kernels" in sys.modules or os.path.isdir(os.path.join(_HERE, "kernels")):
        return
    src = os.path.join(os.path.dirname(_HERE), "kernels")
    init = os.path.join(src, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(f"dlcore: kernel sources not found at {src}")
    spec = importlib.util.spec_from_file_location("dlcore.kernels", init, submodule_search_locations=[src])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dlcore.kernels"] = module
    spec.loader.exec_module(module)
    sys.modules["dlcore"].kernels = module
