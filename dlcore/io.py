"""`dlcore.save` / `dlcore.load`: checkpoints in the safetensors format, written atomically, read without
ever executing code.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``, then the raw bytes. Files that
dlcore writes are plain safetensors files (the `safetensors` package reads them); nested objects such as
``{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}`` are stored as flat tensors
named by their path plus a JSON skeleton in the metadata that restores the nesting, int keys and tuples.

Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over the target:
a crash at any point leaves either the old checkpoint or the new one, never a partial file under the name.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile

import numpy as np

from dlcore import _arrays

_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}
_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
       "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.uint16}
_SKELETON_KEY = "dlcore.skeleton"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or does not match what it is loaded into."""


def _host_bytes(a):
    """(safetensors dtype, shape, bytes) of any array, copied to host memory."""
    if _arrays.is_dlcore_tensor(a):
        a = a.data
    dt = _arrays.dtype_name(a)
    if dt not in _DTYPES:
        raise TypeError(f"save: arrays of dtype {dt} are not supported")
    if _arrays.is_torch(a):
        t = a.detach().cpu().contiguous()
        if dt == "bfloat16":
            import torch

            t = t.view(torch.int16)
        host = t.numpy()
    elif _arrays.is_cupy(a):
        host = a.get()
    else:
        host = np.asarray(a)
    host = np.ascontiguousarray(host)
    if host.dtype.byteorder == ">":
        host = host.astype(host.dtype.newbyteorder("<"))
    return _DTYPES[dt], list(host.shape), host.tobytes()


def _is_array(v):
    try:
        _arrays.kind_of(v)
        return not isinstance(v, np.generic)
    except TypeError:
        return False


def _flatten(obj, path, tensors):
    """Replace arrays by references and collect them; encode tuples and non-string keys for JSON."""
    if _is_array(obj):
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, dict):
        keys = list(obj)
        if all(isinstance(k, str) for k in keys):
            return {"__dict__": {k: _flatten(v, f"{path}/{k}" if path else k, tensors) for k, v in obj.items()}}
        if all(isinstance(k, int) for k in keys):
            return {"__intdict__": {str(k): _flatten(v, f"{path}/{k}" if path else str(k), tensors)
                                    for k, v in obj.items()}}
        raise TypeError(f"save: dict keys at '{path}' must be all str or all int")
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else {"__list__": items}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"__value__": obj}
    raise TypeError(f"save: cannot store a {type(obj).__name__} at '{path}' (arrays, numbers, strings, None, "
                    "lists, tuples and dicts only; nothing is pickled)")


def _unflatten(node, tensors):
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__dict__" in node:
        return {k: _unflatten(v, tensors) for k, v in node["__dict__"].items()}
    if "__intdict__" in node:
        return {int(k): _unflatten(v, tensors) for k, v in node["__intdict__"].items()}
    if "__tuple__" in node:
        return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    if "__list__" in node:
        return [_unflatten(v, tensors) for v in node["__list__"]]
    return node["__value__"]


def save(obj, path) -> None:
    """Write ``obj`` to ``path`` atomically in the safetensors format.

    Args:
        obj: a state dict (name -> array or Tensor), or any nesting of dicts, lists and tuples whose leaves
            are arrays (NumPy, torch, CuPy, dlcore.Tensor), numbers, strings or None, e.g.
            ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}``.
        path: the file to write; its folder must exist.
    """
    tensors = {}
    skeleton = _flatten(obj, "", tensors)
    header, chunks, offset = {}, [], 0
    for name, a in tensors.items():
        dt, shape, raw = _host_bytes(a)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {_SKELETON_KEY: json.dumps(skeleton), "format": "dlcore"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section, as the reference writer does
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load(path):
    """Read a safetensors file written by `save` (or any safetensors file) into NumPy arrays.

    Returns:
        What was saved, with arrays as NumPy arrays (bfloat16 comes back as torch.bfloat16 tensors). A plain
        safetensors file without dlcore's skeleton loads as a flat ``{name: array}`` dict.

    Raises:
        CheckpointError: the file is truncated or corrupt; the message names the tensor concerned.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: truncated header ({n} bytes announced, {len(data) - 8} present)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt header (not a JSON object)")
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + n:]
    tensors = {}
    for name, info in header.items():
        try:
            dt, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor '{name}'") from None
        if dt not in _NP:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dt}")
        itemsize = np.dtype(_NP[dt]).itemsize
        if end - begin != int(np.prod(shape, dtype=np.int64)) * itemsize or begin < 0:
            raise CheckpointError(f"{path}: tensor '{name}' has {end - begin} bytes for shape {shape} ({dt})")
        if end > len(body):
            raise CheckpointError(f"{path}: truncated: tensor '{name}' needs bytes up to {end}, file has {len(body)}")
        arr = np.frombuffer(body[begin:end], dtype=_NP[dt]).reshape(shape).copy()
        if dt == "BF16":
            import torch

            arr = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        tensors[name] = arr
    skeleton = meta.get(_SKELETON_KEY)
    if skeleton is None:
        return tensors
    try:
        return _unflatten(json.loads(skeleton), tensors)
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt dlcore metadata ({e})") from None
