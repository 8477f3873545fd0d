"""dlcore.save / dlcore.load: safetensors format, bit-exact round trips, atomic writes, clear errors
(RELIABILITY 22)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import dlcore
from dlcore.io import CheckpointError

rng = np.random.default_rng(0)


def test_round_trip_is_bit_exact_for_every_dtype(tmp_path):
    obj = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32), "f64": rng.standard_normal(5),
        "f16": rng.standard_normal(4).astype(np.float16), "i64": np.arange(7), "b": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32), "scalar": np.float32(2.5), "torch": torch.randn(2, 2),
        "bf16": torch.randn(3).to(torch.bfloat16),
        "nested": {"state": {0: {"step": 3, "exp_avg": np.ones(2)}}, "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
        "note": "hello", "none": None,
    }
    path = tmp_path / "x.safetensors"
    dlcore.save(obj, path)
    back = dlcore.load(path)
    for k in ("f32", "f64", "f16", "i64", "b", "empty"):
        assert back[k].dtype == obj[k].dtype and back[k].tobytes() == obj[k].tobytes()
    assert back["torch"].tobytes() == obj["torch"].numpy().tobytes()
    assert torch.equal(back["bf16"], obj["bf16"])
    assert back["scalar"] == 2.5 and back["note"] == "hello" and back["none"] is None
    assert back["nested"]["state"][0]["step"] == 3 and back["nested"]["groups"][0]["betas"] == (0.9, 0.99)


def test_files_are_plain_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    sd = {"w": rng.standard_normal((3, 3)).astype(np.float32)}
    dlcore.save(sd, path)
    np.testing.assert_array_equal(safetensors.load_file(str(path))["w"], sd["w"])
    safetensors.save_file({"v": np.arange(4.0)}, str(tmp_path / "theirs.safetensors"))
    np.testing.assert_array_equal(dlcore.load(tmp_path / "theirs.safetensors")["v"], np.arange(4.0))


def test_truncated_and_corrupt_files_raise_clear_errors(tmp_path):
    path = tmp_path / "x.safetensors"
    dlcore.save({"alpha": np.ones(100), "beta": np.ones(100)}, path)
    data = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-50])
    with pytest.raises(CheckpointError, match="truncated.*'beta'"):
        dlcore.load(tmp_path / "t.safetensors")
    (tmp_path / "h.safetensors").write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="truncated header"):
        dlcore.load(tmp_path / "h.safetensors")
    bad = bytearray(data)
    bad[9] = ord("}")  # "{}" followed by junk: not JSON
    (tmp_path / "c.safetensors").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupt header"):
        dlcore.load(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        (tmp_path / "e.safetensors").write_bytes(b"abc")
        dlcore.load(tmp_path / "e.safetensors")


def test_unsupported_objects_are_refused_not_pickled(tmp_path):
    with pytest.raises(TypeError, match="nothing is pickled"):
        dlcore.save({"f": lambda: 1}, tmp_path / "x.safetensors")


def test_failure_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    dlcore.save({"w": np.zeros(3)}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        dlcore.save({"w": np.ones(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(dlcore.load(path)["w"], np.zeros(3))
    assert os.listdir(tmp_path) == ["ck.safetensors"], "the temporary file must be cleaned up"


def test_process_killed_mid_save_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    dlcore.save({"w": np.zeros(3)}, path)
    code = ("import numpy as np, dlcore, sys; big = {f't{i}': np.ones(2_000_000) for i in range(40)}; "
            "print('ready', flush=True); dlcore.save(big, sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    back = dlcore.load(path)  # either the old checkpoint or (if it finished first) the complete new one
    assert set(back) in ({"w"}, {f"t{i}" for i in range(40)})
