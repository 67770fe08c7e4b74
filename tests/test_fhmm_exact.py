"""Factorial HMM exact inference (models.exact.fhmm; issue 5, started): forward-backward on the joint
state space equals brute-force enumeration of every joint path (log p(y) and each chain's posterior
marginals, to 1e-10 in float64), for Gaussian and Bernoulli emissions, with padded sequences of
different lengths; too many joint states is refused with the limit named."""

from __future__ import annotations

import pytest
import torch

from models.exact import fhmm


def random_params(m: int, l: int, d: int, kind: str, seed: int) -> fhmm.FHMMParams:
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    weights = randn(m, l, d)
    if kind == "gaussian":
        a = randn(d, d)
        return fhmm.FHMMParams(randn(m, l), 2 * randn(m, l, l), weights, cov=a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64))
    return fhmm.FHMMParams(randn(m, l), 2 * randn(m, l, l), 2 * weights, bias=randn(d))


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("m,l", [(1, 3), (2, 2), (3, 2), (2, 3)])
def test_forward_backward_equals_brute_force(kind, m, l):
    d, t = 3, 4
    params = random_params(m, l, d, kind, seed=m * 10 + l)
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(3, t, d, generator=gen, dtype=torch.float64)
    if kind == "bernoulli":
        y = (y > 0).to(torch.float64)
    lengths = torch.tensor([4, 2, 3])
    post = fhmm.forward_backward(y, params, lengths)
    for n in range(3):
        log_z, marg = fhmm.brute_force(y[n], params, int(lengths[n]))
        torch.testing.assert_close(post.log_evidence[n], log_z, rtol=0, atol=1e-10)
        torch.testing.assert_close(post.marginals[n, : lengths[n]], marg, rtol=0, atol=1e-10)
        assert (post.marginals[n, lengths[n]:] == 0).all()
    torch.testing.assert_close(post.marginals.sum(-1)[:, 0], torch.ones(3, m, dtype=torch.float64))


def test_padding_does_not_change_a_sequence():
    params = random_params(2, 2, 3, "gaussian", seed=0)
    y = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    padded = torch.cat([y, 100 * torch.ones(1, 3, 3, dtype=torch.float64)], 1)  # junk after the end
    a = fhmm.forward_backward(y, params)
    b = fhmm.forward_backward(padded, params, torch.tensor([5]))
    torch.testing.assert_close(a.log_evidence, b.log_evidence, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.marginals, b.marginals[:, :5], rtol=0, atol=1e-12)


def test_too_many_joint_states_is_refused_before_any_work():
    params = fhmm.FHMMParams(torch.zeros(7, 4), torch.zeros(7, 4, 4), torch.zeros(7, 4, 2), cov=torch.eye(2))
    with pytest.raises(ValueError, match=r"4\^7 = 16,384 joint states; the limit is 4,096"):
        fhmm.forward_backward(torch.zeros(1, 3, 2), params)
