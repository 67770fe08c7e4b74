"""Networks shared by the amortised guides."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    head, the uniform distribution) and training starts from a well-defined point. ``device``: where its
    weights are made (the data's: a network is built on the device of the data it will see).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.Tanh,
                 device: torch.device | None = None):
        sizes = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b, device=device), activation()]
        last = nn.Linear(sizes[-1], out_dim, device=device)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*layers, last)


BASELINES = ("average", "network", "none")


class Baseline(nn.Module):
    """The control variate TraceGraph_ELBO subtracts from a discrete site's downstream cost, per point.

    kind="average": Pyro's decaying average of each point's downstream cost (beta = 0.9; no parameters).
    kind="network": the decaying average plus a learned correction r(x_n), an MLP on the guide's input
        features trained with the guide by TraceGraph_ELBO's extra loss sum_n (cost_n - avg_n - r(x_n))^2.
        Its last layer starts at zero, so it starts as the average baseline (a network alone would
        start at 0 against per-point costs of tens to hundreds of nats, and be worse than no baseline).
    kind="none": no baseline.
    The other estimators ignore the site's ``infer`` dict, so the same guide serves them all.
    """

    def __init__(self, kind: str, in_dim: int = 0, hidden: Sequence[int] = (32,), dtype=torch.float64,
                 device: torch.device | None = None):
        super().__init__()
        if kind not in BASELINES:
            raise ValueError(f"guide_args.baseline must be one of {BASELINES}, got {kind!r}")
        self.kind = kind
        self.net = MLP(in_dim, hidden, 1, device=device).to(dtype) if kind == "network" else None

    def forward(self, inputs: Tensor) -> Tensor:
        """b(x_n): (N,) for the network baseline."""
        return self.net(inputs).squeeze(-1)

    def infer(self, inputs: Callable[[], Tensor]) -> dict:
        """The ``infer`` dict for the guide's discrete site. ``inputs()`` gives the network's inputs
        (N, in_dim); it is called only for the network baseline, so the others cost nothing per step."""
        if self.kind == "average":
            return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
        if self.kind == "network":
            return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9,
                                 "nn_baseline": self, "nn_baseline_input": inputs()}}
        return {}
