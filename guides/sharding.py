r"""Free per-point guide parameters held in part: only the rows of one process's points.

A guide names its free per-point parameters in ``local_parameters`` (experiments/param_groups.py): one row per
point (a mean-field guide's loc and scale, LDA's gamma per document), or one row per piece of a point (LDA's phi
per non-zero entry of a document, whose point the guide gives by ``local_row_points(name, x)``). In data-parallel
SVI (experiments/distributed.py) process r of R holds only the rows of its points S_r: n_r of the N rows of
each, not all of them. The guide keeps indexing by global point (or entry) indices, through :func:`rows`:

    rows(guide, "gamma", docs)    # guide.gamma[docs]: (B, K), whether the guide holds every row or a shard's

which maps global row g to its position among the rows held, held: (n_r,) ascending, by a binary search
(any shard layout; for S_r = {r, r + R, ...} the position is (g - r) // R), and refuses a row the process
does not hold. Outside a data-parallel run (no :class:`RowMap` set) it is plain indexing.

A guide whose per-point parameters are read during training only through :func:`rows` can be sharded (its
other uses of them, such as ``variational()`` or the pictures, come after training, when the rows are gathered
back); ``GuideSpec.data_parallel`` promises it for a guide with ``local_parameters``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

ROW_MAPS = "_row_maps"
"""The attribute, on a guide that holds a shard, of its {local parameter name: RowMap} (absent otherwise)."""
UNCONSTRAINED = "_unconstrained"  # PyroModule stores a PyroParam ``name`` as the parameter ``name_unconstrained``


class RowMap(NamedTuple):
    """The rows of one per-point parameter that this process holds.

    held: (n_r,) their global row indices, ascending; num_rows: the whole parameter's row count."""

    held: Tensor
    num_rows: int

    def local(self, index: Tensor, name: str = "") -> Tensor:
        """Global row indices ``index`` -> their positions in ``held`` (same shape). Raises IndexError (one
        line) for a row this process does not hold."""
        if index.numel() == 0 or self.held.numel() == 0:
            return torch.zeros_like(index)
        pos = torch.searchsorted(self.held, index).clamp_(max=self.held.shape[0] - 1)
        if not torch.equal(self.held[pos], index):
            missing = index[self.held[pos] != index]
            raise IndexError(f"{name or 'a local parameter'}: row {int(missing[0])} is not among the {self.held.shape[0]} "
                             f"rows this process holds (of {self.num_rows})")
        return pos


def rows(guide: nn.Module, name: str, index: Tensor) -> Tensor:
    """``getattr(guide, name)[index]``, ``index`` global row indices: through the guide's :class:`RowMap` for
    ``name`` when it holds a shard of that parameter's rows."""
    value = getattr(guide, name)
    maps = guide.__dict__.get(ROW_MAPS)
    if not maps or name not in maps:
        return value[index]
    return value[maps[name].local(index, name)]


def parameter_key(guide: nn.Module, name: str) -> str:
    """The key of local parameter ``name`` among the guide's own parameters (``name``, or ``name_unconstrained``
    for a PyroParam)."""
    own = guide._parameters  # noqa: SLF001  (the guide's own parameters, not its children's)
    for key in (name, name + UNCONSTRAINED):
        if own.get(key) is not None:
            return key
    raise ValueError(f"{type(guide).__name__}: local parameter {name!r} is not one of its own parameters {list(own)}")


def row_points(guide: nn.Module, name: str, x: Tensor | None, num_points: int) -> Tensor:
    """The point of every row of local parameter ``name``: (num_rows,). Row n is point n unless the guide's
    ``local_row_points(name, x)`` says otherwise (LDA's phi: the document of each entry)."""
    given = getattr(guide, "local_row_points", None)
    points = given(name, x) if given is not None else None
    if points is not None:
        return points
    value = guide._parameters[parameter_key(guide, name)]  # noqa: SLF001
    if value.dim() == 0 or value.shape[0] != num_points:
        raise ValueError(f"{type(guide).__name__}: local parameter {name!r} has shape {tuple(value.shape)}, not one row per "
                         f"point ({num_points}); give local_row_points for it")
    return torch.arange(num_points, device=value.device)


def replace_rows(guide: nn.Module, name: str, value: Tensor) -> None:
    """Make ``value`` the data of local parameter ``name`` (a new leaf, any number of rows): the parameter held
    by this process. Set before the optimiser is built, or its references are stale."""
    key = parameter_key(guide, name)
    old = guide._parameters[key]  # noqa: SLF001
    setattr(guide, key, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))


def hold(guide: nn.Module, name: str, held: Tensor) -> RowMap:
    """Keep only rows ``held`` (ascending global rows) of local parameter ``name``, and index it through them."""
    value = guide._parameters[parameter_key(guide, name)]  # noqa: SLF001
    row_map = RowMap(held, value.shape[0])
    with torch.no_grad():
        replace_rows(guide, name, value[held])
    maps = guide.__dict__.setdefault(ROW_MAPS, {})
    maps[name] = row_map
    return row_map


def release(guide: nn.Module, name: str, full: Tensor) -> None:
    """Hold every row of local parameter ``name`` again: ``full`` (num_rows, ...), plain indexing."""
    replace_rows(guide, name, full)
    maps = guide.__dict__.get(ROW_MAPS, {})
    maps.pop(name, None)
    if not maps:
        guide.__dict__.pop(ROW_MAPS, None)
