"""Shared fixtures: small float64 problems with known truth."""

from __future__ import annotations

import os

import pytest
import torch

from models.gmm import GMMArgs, init_params, random_params, simulate


class Problem:
    def __init__(self, num_components: int, dim: int, num_points: int, covariance: str, seed: int, separation: float):
        self.args = GMMArgs(num_components, covariance)
        self.truth = random_params(num_components, dim, seed, separation, covariance)
        self.x, self.z = simulate(self.truth, num_points, seed + 1)
        self.init = init_params(self.x, self.args, seed)


@pytest.fixture
def small_problem() -> Problem:
    """K=3, D=2, N=300, moderately overlapping (separation 2 in units of the scales)."""
    return Problem(3, 2, 300, "diag", seed=0, separation=2.0)


def random_q(num_points: int, num_components: int, seed: int) -> torch.Tensor:
    """A random (N, K) table of categorical probabilities, some rows nearly deterministic."""
    gen = torch.Generator().manual_seed(seed)
    logits = 4.0 * torch.randn(num_points, num_components, generator=gen, dtype=torch.float64)
    return torch.softmax(logits, -1)


if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    torch.set_num_threads(1)
