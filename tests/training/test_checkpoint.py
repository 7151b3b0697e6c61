"""Checkpoints: atomic layout, verification, and refusal to unpickle anything but tensors."""

import hashlib
import io
import json
import os

import pytest
import torch

from training.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint


def _state():
    return {
        "agent": {"nets": {"w": torch.arange(6.0).reshape(2, 3)}, "episode": 3},
        "trainer": {"env_step": 1200, "best": float("-inf")},
        "rng": {"torch": torch.get_rng_state()},
    }


def test_round_trip_and_latest(tmp_path):
    save_checkpoint(tmp_path, 100, _state(), "a: 1\n", buffer={"x": torch.ones(3)})
    p = save_checkpoint(tmp_path, 200, _state(), "a: 2\n", buffer={"x": torch.zeros(3)})
    ck = load_checkpoint(tmp_path)
    assert ck.path == p and ck.step == 200 and ck.config_yaml == "a: 2\n"
    assert torch.equal(ck.state["agent"]["nets"]["w"], _state()["agent"]["nets"]["w"])
    assert torch.equal(ck.buffer["x"], torch.zeros(3))
    assert load_checkpoint(tmp_path / "checkpoints" / "step_000000000100").step == 100


def test_keeps_only_newest(tmp_path):
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, s, _state(), "", keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_000000000003", "step_000000000004"]


def test_leftover_temp_dir_from_a_crash_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 10, _state(), "")
    crashed = tmp_path / "checkpoints" / ".step_000000000020.tmp-999"
    crashed.mkdir()
    (crashed / "state.pt").write_bytes(b"half")
    assert load_checkpoint(tmp_path).step == 10


def test_truncated_file_is_named(tmp_path):
    p = save_checkpoint(tmp_path, 5, _state(), "")
    data = (p / "state.pt").read_bytes()
    (p / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"state\.pt: truncated"):
        load_checkpoint(tmp_path)


def test_modified_file_fails_checksum(tmp_path):
    p = save_checkpoint(tmp_path, 5, _state(), "", buffer={"x": torch.ones(4)})
    data = bytearray((p / "buffer.pt").read_bytes())
    data[-20] ^= 0xFF
    (p / "buffer.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"buffer\.pt: SHA-256"):
        load_checkpoint(tmp_path)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused_even_with_a_consistent_manifest(tmp_path):
    p = save_checkpoint(tmp_path, 5, _state(), "")
    buf = io.BytesIO()
    torch.save({"agent": Evil()}, buf)
    data = buf.getvalue()
    (p / "state.pt").write_bytes(data)
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (p / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="tensors-only"):
        load_checkpoint(tmp_path)


def test_missing_and_malformed(tmp_path):
    with pytest.raises(CheckpointError, match="no such run"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        find_checkpoint(tmp_path)
    p = save_checkpoint(tmp_path, 5, _state(), "")
    (p / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed manifest"):
        load_checkpoint(tmp_path)
    (p / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_an_older_format_is_refused_saying_so(tmp_path):
    p = save_checkpoint(tmp_path, 100, _state(), "agent:\n  hparams: {}\n")
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["format"] = 1  # what every checkpoint written before the config redesign holds
    (p / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"format 1, this version reads 2 \(written before the config redesign"):
        load_checkpoint(tmp_path)
    manifest["format"] = 99
    (p / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"format 99, this version reads 2$"):
        load_checkpoint(tmp_path)
