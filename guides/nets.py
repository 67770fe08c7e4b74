"""Networks shared by the amortised guides."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Standardise(nn.Module):
    """Fixed affine map x -> (x - mean) / std, with mean and std taken from the training data.

    Recognition networks see inputs on a unit scale whatever the data's units; the statistics are
    buffers (saved with the guide, never trained).
    """

    def __init__(self, x: Tensor):
        super().__init__()
        std = x.std(0, unbiased=False)
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Sequential):
    """in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim, with an activation between layers.

    The last layer is initialised to zero, so an untrained network outputs zeros (for a softmax
    head, the uniform distribution) and training starts from a well-defined point.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.Tanh):
        sizes = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        last = nn.Linear(sizes[-1], out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*layers, last)
