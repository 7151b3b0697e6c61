"""Atomic, verifiable checkpoints that load without unpickling arbitrary objects.

Layout of a run directory::

    <run_dir>/checkpoints/step_000012000/
        state.pt       agent weights + optimizers, trainer counters, RNG states (tensors and plain values)
        buffer.pt      replay buffer rows + counters (optional)
        config.yaml    the resolved config the run was started with
        manifest.json  format version, step, size and SHA-256 of every file above
    <run_dir>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint is written into a temporary directory, every file is fsynced, and only then is the
directory renamed into place and ``latest`` replaced (write temp, fsync, rename), so a run killed at
any moment leaves either the old or the new checkpoint, never half of one. Files are loaded with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers, after
the manifest's sizes and hashes are checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from common.files import atomic_write_bytes, fsync_dir, write_bytes_durable

# 2: composed configs (agent.<part>.<key>, a top-level world_model section) and self-contained checkpoints.
# Format 1 (agent.hparams.<key>) is refused: its saved config no longer composes into an agent.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, tampered with or from an incompatible run."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict
    buffer: dict | None
    config_yaml: str


def _serialise(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    state: dict,
    config_yaml: str,
    buffer: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``step`` atomically and keep the newest ``keep`` ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:012d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {"state.pt": _serialise(state), "config.yaml": config_yaml.encode()}
    if buffer is not None:
        files["buffer.pt"] = _serialise(buffer)
    manifest = {"format": FORMAT_VERSION, "step": int(step), "files": {}}
    for fname, data in files.items():
        write_bytes_durable(tmp / fname, data)
        manifest["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_bytes_durable(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    fsync_dir(tmp)
    if final.exists():  # same step saved twice (e.g. final == periodic): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_bytes(root / LATEST, name.encode())
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _float_tensors(obj: object) -> Iterator[torch.Tensor]:
    """Every floating-point tensor in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _float_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _float_tensors(v)


def save_if_finite(state: dict, save: Callable[[], Path], run_dir: Path) -> str:
    """After a refused non-finite loss: checkpoint with ``save()`` if every float tensor in ``state`` (an agent's
    state dict: weights, optimiser moments, at any depth) is still finite (the guarded optimiser step refuses a bad
    loss before touching them), and say where the last good state is, for the error message."""
    finite = all(bool(torch.isfinite(t).all()) for t in _float_tensors(state))
    if not finite:
        return f"Weights are not finite; resume from the last checkpoint in {run_dir / 'checkpoints'}"
    return f"Last good state saved to {save()}"


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a run directory, its ``checkpoints/`` folder or a checkpoint folder to a checkpoint folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such run or checkpoint directory")
    if (p / MANIFEST).exists():
        return p
    for root in (p / "checkpoints", p):
        latest = root / LATEST
        if latest.exists():
            target = root / latest.read_text().strip()
            if not (target / MANIFEST).exists():
                raise CheckpointError(f"{latest} points to {target}, which is not a complete checkpoint")
            return target
    raise CheckpointError(f"{p}: no checkpoint found (expected {MANIFEST} or checkpoints/{LATEST} inside)")


def _read_verified(ckpt: Path, fname: str, meta: dict) -> bytes:
    f = ckpt / fname
    if not f.exists():
        raise CheckpointError(f"{f}: file listed in the manifest is missing")
    data = f.read_bytes()
    if len(data) != meta["bytes"]:
        raise CheckpointError(f"{f}: truncated or altered: expected {meta['bytes']} bytes, found {len(data)}")
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{f}: SHA-256 does not match the manifest; the file was modified or corrupted")
    return data


def _load_tensors(f: Path, data: bytes, map_location: str | torch.device) -> dict:
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported with the file name
        raise CheckpointError(f"{f}: cannot be loaded as tensors-only data ({type(e).__name__}: {e})") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", load_buffer: bool = True) -> Checkpoint:
    """Load and verify a checkpoint (see module docstring). Raises :class:`CheckpointError` with the file."""
    ckpt = find_checkpoint(path)
    mpath = ckpt / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        step = int(manifest["step"])
        fmt = manifest["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath}: malformed manifest ({e})") from e
    if fmt != FORMAT_VERSION:
        older = (
            " (written before the config redesign, with agent.hparams.<key> settings; retrain, or read it with "
            "a checkout of commit 3e8f338 or earlier)"
            if isinstance(fmt, int) and fmt < FORMAT_VERSION
            else ""
        )
        raise CheckpointError(f"{mpath}: checkpoint format {fmt}, this version reads {FORMAT_VERSION}{older}")
    for required in ("state.pt", "config.yaml"):
        if required not in files:
            raise CheckpointError(f"{mpath}: manifest lists no {required}")
    state = _load_tensors(ckpt / "state.pt", _read_verified(ckpt, "state.pt", files["state.pt"]), map_location)
    config_yaml = _read_verified(ckpt, "config.yaml", files["config.yaml"]).decode()
    buffer = None
    if load_buffer and "buffer.pt" in files:
        raw = _read_verified(ckpt, "buffer.pt", files["buffer.pt"])
        buffer = _load_tensors(ckpt / "buffer.pt", raw, "cpu")
    return Checkpoint(path=ckpt, step=step, state=state, buffer=buffer, config_yaml=config_yaml)
