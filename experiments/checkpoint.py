"""Training checkpoints, and the only way vizoo reads a tensor file back: ``torch.load(..., weights_only=True)``.

A checkpoint holds everything one guide's SVI needs to continue bit for bit: the model's and the guide's
state_dicts, the optimiser's and the learning-rate schedule's state, the estimator's state in Pyro's
param store (TraceGraph_ELBO's decaying-average baselines), the torch, Python and NumPy random states, the
step, and the ELBO and time histories. It is plain data (tensors, all on the CPU whatever the run's device, so
it resumes on any device; numbers, strings, lists, dicts), written
with ``torch.save`` to a temporary file in the same folder and renamed into place (``report.write_atomic``),
so killing the process at any moment, SIGKILL included, leaves the previous checkpoint or the new one,
never half of one.

Reading uses ``weights_only=True``: a file that would run code when unpickled (a crafted pickle) is
refused with :class:`CheckpointError` and nothing in it runs. A checkpoint is also checked against the run
it claims to continue (the config and the data, by SHA-256) and against the modules it is loaded into
(keys and shapes), before any work starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.distributions import constraints

from ..models.errors import VizooError
from . import report
from .devices import move, to_cpu

FORMAT = "vizoo-checkpoint-1"


class CheckpointError(VizooError):
    """A checkpoint or parameter file that cannot be loaded safely, or does not belong to this run."""


def load_tensors(path: Path, advice: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; anything else (a crafted pickle, a truncated or foreign
    file) is a one-line :class:`CheckpointError` naming the file, ending with ``advice`` (what to do about a
    damaged file) when given. No code in the file can run."""
    path = Path(path)
    tail = f"; {advice}" if advice else ""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read: {err.strerror or err}") from None
    if not data:
        raise CheckpointError(f"{path}: the file is damaged: it is empty{tail}")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (refused globals), RuntimeError (not a torch file), EOFError, ...
        torch_like = data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"  # torch.save's zip, or a pickle
        if "Unsupported global" in str(err) or ("Weights only load failed" in str(err) and torch_like):
            raise CheckpointError(f"{path}: cannot be loaded as a tensor file with weights_only=True: it holds objects "
                                  "other than tensors and plain data (refused: loading it could run code)") from None
        raise CheckpointError(f"{path}: the file is damaged: {_damage(data)}{tail}") from None


def _damage(data: bytes) -> str:
    """What is wrong with a file torch cannot load: torch's own words ("negative seek value -2739") say little."""
    if data[:4] == b"PK\x03\x04":  # the start of torch.save's zip archive; its directory is at the end
        return f"it is cut short ({len(data)} bytes, the end of its archive is missing), or was overwritten in part"
    if data[:1] == b"\x80":  # a pickle (torch's legacy format) that does not load
        return f"a pickle that ends early or is corrupt ({len(data)} bytes)"
    return f"it is not a file written by torch.save (it starts with {data[:8]!r})"


def fingerprint(value: Any) -> str:
    """SHA-256 of a tensor's bytes (with its dtype and shape), or of a JSON-serialisable value. A sparse CSR
    tensor's: its row pointers, columns and values (a dense tensor's fingerprint never equals a sparse one's)."""
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor) and value.layout == torch.sparse_csr:
        h.update(f"sparse_csr {value.dtype} {tuple(value.shape)}".encode())
        for part in (value.crow_indices(), value.col_indices(), value.values()):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- random states and the param store


def rng_state() -> dict[str, Any]:
    """torch's, Python's and NumPy's global random states, as plain data; with CUDA in use, each CUDA device's
    too (Pyro draws a run's samples from the generator of the data's device)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states. CUDA states are restored where this machine has those devices (a run
    saved on a GPU and resumed on the CPU continues, though not bit for bit: its draws come from another
    generator)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def param_store_state() -> dict[str, torch.Tensor]:
    """The estimator's state in Pyro's global param store (model and guide parameters live in their modules).
    Only unconstrained entries occur (TraceGraph_ELBO's baselines); anything else is a bug, said so here."""
    store = pyro.get_param_store()
    out = {}
    for name in store.keys():
        if store._constraints[name] is not constraints.real:  # noqa: SLF001  (no public accessor)
            raise RuntimeError(f"param store entry {name!r} has constraint {store._constraints[name]}: not checkpointed")
        out[name] = store[name].detach().clone()
    return out


def set_param_store_state(state: dict[str, torch.Tensor]) -> None:
    store = pyro.get_param_store()
    store.clear()
    for name, value in state.items():
        store[name] = value.clone()


# --------------------------------------------------------------------------- files


class Checkpointer:
    """Saves and loads one guide's checkpoint, ``<run>/checkpoints/<guide>.pt``.

    ``identity`` (the config's and the data's fingerprints, the guide's name) is written into every
    checkpoint and must match when one is loaded. ``due(step, now)`` says whether the schedule asks for a
    save after ``step`` steps."""

    def __init__(self, path: Path, identity: dict[str, str], every_steps: int = 0, every_seconds: float = 0.0):
        self.path = Path(path)
        self.identity = dict(identity)
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.last_save = time.perf_counter()
        self.saves = 0

    def due(self, step: int, now: float) -> bool:
        by_count = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_seconds > 0 and now - self.last_save >= self.every_seconds
        return by_count or by_time

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with the identity) atomically. A state with a non-finite tensor is refused: a
        checkpoint never holds NaN, so the last one on disk is always a good one."""
        bad = _first_non_finite(state)
        if bad:
            raise RuntimeError(f"refusing to write a checkpoint with a non-finite value at {bad}")
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **self.identity, **to_cpu(state)}, buf)  # device-independent: every tensor on the CPU
        report.write_atomic(self.path, buf.getvalue())
        self.last_save = time.perf_counter()
        self.saves += 1

    def load(self, steps: int, advice: str = "") -> dict[str, Any] | None:
        """The checkpoint on disk, checked, or None when there is none. ``steps``: the run's svi.steps;
        ``advice``: what to do about a damaged file, said after the error."""
        if not self.path.exists():
            return None
        state = load_tensors(self.path, advice)
        where = str(self.path)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a vizoo checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
        for key, expected in self.identity.items():
            if state.get(key) != expected:
                raise CheckpointError(f"{where}: its {key} ({str(state.get(key))[:16]}) is not this run's ({expected[:16]}): "
                                      "it belongs to another run, or the config or data changed since")
        step = state.get("step")
        if not isinstance(step, int) or not 0 <= step <= steps:
            raise CheckpointError(f"{where}: step {step!r} is outside 0..svi.steps={steps}")
        for key in ("elbo_trace", "times"):
            if not isinstance(state.get(key), list) or len(state[key]) != step:
                raise CheckpointError(f"{where}: {key} must list one value per step ({step}), got {_length(state.get(key))}")
        for key in ("model", "guide_state", "optimiser", "schedule", "param_store", "rng"):
            if not isinstance(state.get(key), dict):
                raise CheckpointError(f"{where}: missing or malformed {key!r}")
        bad = _first_non_finite(state)
        if bad:
            raise CheckpointError(f"{where}: non-finite value at {bad}")
        return state


def on_device(state: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A loaded checkpoint (CPU tensors) ready to resume on ``device``: the estimator's param store entries moved
    there. The modules' and the optimiser's ``load_state_dict`` copy onto their parameters' device themselves,
    and random states stay on the CPU, where torch keeps them."""
    return {**state, "param_store": move(state["param_store"], device)}


def check_modules(state: dict[str, Any], model: torch.nn.Module, guide: torch.nn.Module, where: str) -> None:
    """The checkpoint's state_dicts have exactly the modules' keys, shapes and dtypes."""
    for key, module in (("model", model), ("guide_state", guide)):
        want = module.state_dict()
        have = state[key]
        if set(have) != set(want):
            extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
            raise CheckpointError(f"{where}: {key} does not match the run's {key.split('_')[0]}: "
                                  f"unexpected {extra[:3]}, missing {missing[:3]}")
        for name, value in want.items():
            got = have[name]
            if not isinstance(got, torch.Tensor) or got.shape != value.shape or got.dtype != value.dtype:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise CheckpointError(f"{where}: {key}.{name} has shape {shape} "
                                      f"{getattr(got, 'dtype', '')}, the run's has {tuple(value.shape)} {value.dtype}")


def _first_non_finite(obj: Any, path: str = "") -> str:
    if isinstance(obj, torch.Tensor):
        return path if obj.is_floating_point() and not torch.isfinite(obj).all() else ""
    if isinstance(obj, float):
        return path if obj != obj or obj in (float("inf"), float("-inf")) else ""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return ""
    for k, v in items:
        found = _first_non_finite(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return ""


def _length(value: Any) -> str:
    return f"{len(value)} values" if isinstance(value, list) else type(value).__name__
