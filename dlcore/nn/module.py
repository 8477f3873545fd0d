"""`Module` and `Parameter`: torch.nn.Module's bookkeeping (registration by attribute, recursive
parameters, state_dict round trips, train/eval) over dlcore Tensors."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from dlcore import _arrays
from dlcore.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter({self.data!r})"


class Module:
    """Base class of every layer: assign Parameters and Modules as attributes and they are registered.

    Example:
        >>> class MLP(dlcore.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = dlcore.nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.fc(x)
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call super().__init__() in your Module's __init__ before assigning attributes")
        params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        if name in d.get("_parameters", {}):
            return d["_parameters"][name]
        if name in d.get("_modules", {}):
            return d["_modules"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ---------------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_prefix, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self):
        """Parameter arrays by dotted name (the arrays themselves, not copies)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this module's parameters in place.

        Raises:
            KeyError: missing or unexpected keys (with ``strict``), listing them.
            ValueError: a shape or dtype mismatch, naming the tensor.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, value in state_dict.items():
            if name not in own:
                continue
            p = own[name]
            src = value.data if isinstance(value, Tensor) else value
            if tuple(src.shape) != p.shape:
                raise ValueError(f"load_state_dict: '{name}' has shape {tuple(src.shape)} in the checkpoint but "
                                 f"{p.shape} in the model")
            if _arrays.dtype_name(src) != _arrays.dtype_name(p.data):
                raise ValueError(f"load_state_dict: '{name}' is {_arrays.dtype_name(src)} in the checkpoint but "
                                 f"{_arrays.dtype_name(p.data)} in the model")
            src = _arrays.from_native(_arrays.to_native(src, "numpy"), "numpy") if isinstance(p.data, np.ndarray) \
                else src
            if isinstance(p.data, np.ndarray):
                np.copyto(p.data, src)
            else:
                p.data.copy_(_arrays.from_native(src, _arrays.kind_of(p.data)))
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            p.grad = None

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # -- printing ------------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"
