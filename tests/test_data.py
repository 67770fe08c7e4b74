"""Built-in data sets load offline with the right shapes; bad matrices are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vizoo.models.datasets import DataOptions, load_faithful, load_iris
from vizoo.models.errors import DataError
from vizoo.models.gmm import validate_data


def test_faithful_is_the_r_data_set():
    data = load_faithful(DataOptions(standardise=False), None, 0)
    assert data.x.shape == (272, 2) and data.features == ("eruptions", "waiting")
    torch.testing.assert_close(data.x[0], torch.tensor([3.6, 79.0], dtype=torch.float64))
    z = load_faithful(DataOptions(), None, 0).x
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_iris():
    data = load_iris(DataOptions("iris", standardise=False), None, 0)
    assert data.x.shape == (150, 4) and data.labels.bincount().tolist() == [50, 50, 50]


@pytest.mark.parametrize(
    "x,message",
    [
        (np.array([[1.0, np.nan]] * 3), "non-finite"),
        (np.ones(5), "rank 1"),
        (np.ones((2, 2, 2)), "rank 3"),
        (np.ones((0, 3)), "empty"),
        (np.ones((3, 0)), "empty"),
        (np.ones((2, 3)), "2 points, fewer than num_components=3"),
        (np.array([["a", "b"]] * 4), "data must be numeric"),
    ],
)
def test_validate_data_refuses(x, message):
    with pytest.raises(DataError, match=message):
        validate_data(x, 3)


def test_validate_data_returns_float64():
    assert validate_data(np.ones((4, 2), dtype=np.int64), 2).dtype == torch.float64
