"""What every loader shares: :class:`DataOptions` (the ``[data]`` table of a config), :class:`Dataset` (what a
loader returns) and column standardisation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import scipy.sparse as sp
import torch
from torch import Tensor

from ..errors import DataError


@dataclass(frozen=True)
class DataOptions:
    """Which data to load, as written under ``[data]`` in a config.

    name: a data set the model lists (``vizoo list``), or "file" for ``path``.
    path: a .npy or .csv matrix, with name = "file".
    standardise: centre and scale each column (real data and files; synthetic data keeps its units).
    num_points, dim, separation: size and spread of synthetic data drawn from the model's simulator
        (dim is the number of symptoms for the noisy-OR network, the vocabulary for synthetic documents).
    doc_length: mean number of words in a synthetic document (Poisson, at least one).
    num_steps: length of each synthetic sequence (factorial HMM).
    vocab_size, min_doc_freq: the vocabulary cut-off for text corpora: words in at least min_doc_freq
        documents, then the vocab_size most frequent.
    subset: use only the first ``subset`` documents or rows of a real data set (0: all of them).
    heldout: the fraction of rows (documents) held out, at random (seeded by the run's seed), for the
        model's held-out evaluation (0: none; models with a held-out metric only).
    """

    name: str = "faithful"
    path: str = ""
    standardise: bool = True
    num_points: int = 1000
    dim: int = 2
    separation: float = 4.0
    doc_length: int = 50
    num_steps: int = 20
    vocab_size: int = 2000
    min_doc_freq: int = 5
    subset: int = 0
    heldout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ValueError(f"data.num_points must be >= 1, got {self.num_points}")
        if self.dim < 1:
            raise ValueError(f"data.dim must be >= 1, got {self.dim}")
        if not self.separation > 0:
            raise ValueError(f"data.separation must be > 0, got {self.separation}")
        for key in ("doc_length", "num_steps", "vocab_size", "min_doc_freq"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.subset < 0:
            raise ValueError(f"data.subset must be >= 0 (0 means all), got {self.subset}")
        if not 0 <= self.heldout < 1:
            raise ValueError(f"data.heldout must be a fraction in [0, 1), got {self.heldout}")
        if self.name == "file" and not self.path:
            raise ValueError("data.path must be set when data.name = 'file'")


class Dataset(NamedTuple):
    """x: (N, D) float64 data ((N, T, D) NaN-padded sequences for the factorial HMM). truth: the generating
    parameters when known (synthetic), else None. labels: (N,) true assignments when known, else None.
    features: the column names. x_test: a fixed test set that comes with the data (chorales; synthetic
    sequences), used as the held-out set when ``data.heldout`` is 0."""

    x: Tensor
    description: str
    features: tuple[str, ...]
    truth: Any = None
    labels: Tensor | None = None
    x_test: Tensor | None = None


def standardise(x: Tensor) -> Tensor:
    """Centre each column and scale it to unit variance (columns with zero variance are only centred). A mean or
    standard deviation that overflows (values near the largest float, ~1e308) is a :class:`DataError`: it would
    otherwise turn every value into 0 or NaN without a word."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    out = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    bad = ~(torch.isfinite(mean) & torch.isfinite(std) & torch.isfinite(out).all(0))
    if bad.any():
        col = int(bad.nonzero()[0, 0])
        raise DataError(f"standardising the data overflows in column {col} (largest |value| "
                        f"{float(x[:, col].abs().max()):.3g}, mean {float(mean[col]):.3g}, sd {float(std[col]):.3g}): "
                        "rescale the data (e.g. divide it by a power of ten) so that its values are far from 1e308")
    return out


def scaled(x: Tensor, features: tuple[str, ...], standardised: bool) -> tuple[Tensor, tuple[str, ...]]:
    """Standardise when asked, and say so in the column names (plots label their axes with them)."""
    if not standardised:
        return x, features
    return standardise(x), tuple(f"{f} (standardised)" for f in features)


def take_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for a dense tensor, and the same rows of a sparse one (COO, or CSR, which torch cannot index),
    kept sparse: what a held-out split takes from a corpus without making it dense."""
    if x.layout == torch.strided:
        return x[idx]
    if x.layout == torch.sparse_coo:
        return x.index_select(0, idx)
    if x.layout != torch.sparse_csr:
        raise ValueError(f"take_rows: layout {x.layout} is not supported (dense, sparse COO or CSR)")
    crow, col, values = x.crow_indices(), x.col_indices(), x.values()
    idx = idx.to(crow.device)
    starts, lengths = crow[idx], crow[idx + 1] - crow[idx]
    new_crow = torch.zeros(len(idx) + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(lengths, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    pos = torch.repeat_interleave(starts - new_crow[:-1], lengths, output_size=total)
    pos = pos + torch.arange(total, dtype=crow.dtype, device=crow.device)
    return sparse_csr(new_crow, col[pos], values[pos], (len(idx), x.shape[1]), check=False)  # rows of a valid one


def sparse_csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int], check: bool = True) -> Tensor:
    """A torch sparse CSR tensor (torch's "beta" warning silenced); ``check``: torch checks the invariants (sorted,
    in-range columns, consistent row pointers), as it must for anything read from outside."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=tuple(shape), dtype=values.dtype, device=values.device,
                                       check_invariants=check)


def to_scipy_csr(x: Tensor):
    """A torch sparse tensor (CSR or COO, any device) as a scipy CSR matrix on the CPU (values as stored)."""
    x = x.detach().cpu()
    csr = (x.coalesce() if x.layout == torch.sparse_coo else x).to_sparse_csr()
    return sp.csr_matrix((csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy()), shape=tuple(csr.shape))
