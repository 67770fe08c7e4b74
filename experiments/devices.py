"""Where a run's tensors live: the ``device`` config key, checked and resolved, and moving parameter objects.

    device = "cpu"      the default
    device = "cuda"     the current CUDA device; "cuda:N" the N-th
    device = "auto"     "cuda" when torch sees a CUDA device, else "cpu"

Everything follows the data. :func:`experiments.run.prepare` moves the validated data (training and held-out
rows) to the run's device; models, guides and exact references create every tensor that meets the data on
the data's device (``x.new_zeros(...)``, ``torch.zeros(..., device=x.device)``), so parameters, guides,
exact fits, plate subsample indices and evaluation run there. Random draws of initialisations are made on
the CPU from a seeded ``torch.Generator`` and then moved, so a run starts from the same numbers on every
device. Reports, plots and files move what they need to the CPU; checkpoints are saved with every tensor on
the CPU and load onto whatever device the resumed run uses.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import torch
from torch import nn

from ..models.errors import ConfigError

DEVICES = ("cpu", "cuda", "cuda:N", "auto")
_CUDA_N = re.compile(r"cuda:(\d{1,3})")


def check_device(name: Any) -> None:
    """Refuse, before any work, a device that is not one of :data:`DEVICES` or that this machine does not have
    (one-line :class:`ConfigError` naming ``device`` and the value)."""
    if not isinstance(name, str) or not (name in ("cpu", "cuda", "auto") or _CUDA_N.fullmatch(name)):
        raise ConfigError(f"device must be one of {', '.join(repr(d) for d in DEVICES)}, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r}: this machine has no CUDA device torch can use (torch {torch.__version__}); "
                              "use 'cpu' or 'auto' (a run made elsewhere: vizoo run --resume RUN --set device=cpu, "
                              "or vizoo.load(RUN, device='cpu'))")
        index = _CUDA_N.fullmatch(name)
        count = torch.cuda.device_count()
        if index is not None and int(index.group(1)) >= count:
            raise ConfigError(f"device={name!r}: this machine has {count} CUDA device{'s' * (count != 1)} "
                              f"(cuda:0 to cuda:{count - 1})")


def resolve_device(name: str) -> torch.device:
    """The torch device of a checked ``device`` value ("auto": CUDA when available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def move(obj: Any, device: torch.device | str, copy_modules: bool = False) -> Any:
    """``obj`` with every tensor in it on ``device``: a tensor, a module (moved in place and returned; a moved
    copy with ``copy_modules``), a parameter object (a dataclass or a NamedTuple of tensors, e.g. ``GMMParams``,
    ``FHMMParams``), or dicts, lists and tuples of these. Anything else is returned as it is."""
    def again(v: Any) -> Any:
        return move(v, device, copy_modules)

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, nn.Module):
        if copy_modules and _devices(obj) - {torch.device(device)}:
            return copy.deepcopy(obj).to(device)
        return obj if copy_modules else obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
        return type(obj)(*(again(v) for v in obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: again(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: again(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(again(v) for v in obj)
    return obj


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (for files, plots and reports); a module that is elsewhere is copied,
    not moved, so the trained module stays where it is."""
    return move(obj, "cpu", copy_modules=True)


def _devices(module: nn.Module) -> set[torch.device]:
    return {t.device for t in (*module.parameters(), *module.buffers())}


def tensor_devices(*objs: Any) -> set[torch.device]:
    """Every device a tensor in ``objs`` lives on (modules' parameters and buffers, parameter objects, dicts,
    lists): what the device tests check."""
    found: set[torch.device] = set()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            found.add(obj.device)
        elif isinstance(obj, nn.Module):
            found.update(_devices(obj))
        elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
            for v in obj:
                visit(v)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name))
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for o in objs:
        visit(o)
    return found
