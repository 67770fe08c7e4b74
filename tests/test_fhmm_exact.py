"""Factorial HMM exact inference (models.exact.fhmm): forward-backward equals brute-force enumeration of every
joint path (log p(y), marginals and pairwise marginals, to 1e-10 in float64) for Gaussian and Bernoulli
emissions with padded sequences; both mean-field families satisfy ELBO + KL = log p(y) with KL summed over
every path; Ghahramani & Jordan's fixed points, Baum-Welch and variational EM never decrease their
objectives; the structured optimum is at least the factorised one; too many joint states is refused."""

from __future__ import annotations

import pytest
import torch
from vizoo.models.exact import fhmm


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
        log_z, marg, pair, _, _ = fhmm.brute_force(y[n], params, int(lengths[n]))
        torch.testing.assert_close(post.log_evidence[n], log_z, rtol=0, atol=1e-10)
        torch.testing.assert_close(post.marginals[n, : lengths[n]], marg, rtol=0, atol=1e-10)
        torch.testing.assert_close(post.pairwise[n, : lengths[n] - 1], pair, rtol=0, atol=1e-10)
        assert (post.pairwise[n, lengths[n] - 1 :] == 0).all()
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


# --------------------------------------------------------------------------- variational families


def tiny_data(kind: str, m: int, l: int, seed: int = 0):
    d, t = 3, 4
    params = random_params(m, l, d, kind, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    y = torch.randn(3, t, d, generator=gen, dtype=torch.float64)
    if kind == "bernoulli":
        y = (y > 0).to(torch.float64)
    y[1, 2:] = float("nan")  # sequence 1 has length 2, sequence 2 length 3
    y[2, 3:] = float("nan")
    return y, params, torch.tensor([4, 2, 3])


def random_q(family: str, y: torch.Tensor, m: int, l: int, lengths: torch.Tensor, seed: int) -> fhmm.Variational:
    gen = torch.Generator().manual_seed(seed)
    n, t = y.shape[:2]
    if family == "factorised":
        return fhmm.factorised(torch.softmax(2 * torch.randn(n, t, m, l, generator=gen, dtype=torch.float64), -1), lengths)
    init = torch.randn(m, l, generator=gen, dtype=torch.float64)
    trans = 2 * torch.randn(m, l, l, generator=gen, dtype=torch.float64)
    return fhmm.structured(init, trans, 2 * torch.randn(n, t, m, l, generator=gen, dtype=torch.float64), lengths)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("family", ["factorised", "structured"])
@pytest.mark.parametrize("m,l", [(2, 2), (2, 3), (3, 2)])
def test_elbo_plus_brute_force_kl_is_log_evidence(kind, family, m, l):
    """ELBO(q) in closed form + KL(q || p(s|y)) summed over every joint path = log p(y), to 1e-10, for
    arbitrary members of each family (not only optima), with padded sequences."""
    y, params, lengths = tiny_data(kind, m, l, seed=m + l)
    q = random_q(family, y, m, l, lengths, seed=7)
    bound = fhmm.elbo(y, params, q)
    log_p = fhmm.forward_backward(y, params).log_evidence
    for n in range(3):
        kl_n = fhmm.brute_force_kl(q, n, y[n], params, int(lengths[n]))
        assert kl_n > 0
        torch.testing.assert_close(bound[n] + kl_n, log_p[n], rtol=0, atol=1e-10)
    assert (bound < log_p).all()
    torch.testing.assert_close(fhmm.kl(y, params, q), log_p - bound, rtol=0, atol=0)


def test_structured_family_marginals_match_its_path_distribution():
    """The structured q's marginals, pairwise tables and entropy agree with its path probabilities
    enumerated directly (exp of the potentials, normalised): the entropy is not circular with the KL test."""
    y, params, lengths = tiny_data("gaussian", 2, 2)
    q = random_q("structured", y, 2, 2, lengths, seed=3)
    gen = torch.Generator().manual_seed(3)
    init = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    trans = 2 * torch.randn(2, 2, 2, generator=gen, dtype=torch.float64)
    unary = 2 * torch.randn(3, 4, 2, 2, generator=gen, dtype=torch.float64)
    n, length = 0, 4
    paths = fhmm.joint_states(2 * length, 2).reshape(-1, length, 2)  # every joint path (T, M)
    chains = torch.arange(2)
    score = torch.log_softmax(init, -1)[chains, paths[:, 0]].sum(-1)
    score = score + torch.log_softmax(trans, -1)[chains, paths[:, :-1], paths[:, 1:]].sum((1, 2))
    score = score + unary[n, torch.arange(length)[:, None], chains, paths].sum((1, 2))
    p = torch.softmax(score, 0)
    onehot = torch.nn.functional.one_hot(paths, 2).to(torch.float64)
    torch.testing.assert_close(q.marginals[n], torch.einsum("p,ptml->tml", p, onehot), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.entropy[n], -(p * torch.log(p)).sum(), rtol=0, atol=1e-12)


def test_gaussian_expected_emission_closed_form_equals_enumeration():
    """Ghahramani & Jordan's closed form for E_q[log N(y | sum_m W_m s^m, C)] equals contracting the exact
    (N, T, L^M) table with q: for the whole state and with one chain's state fixed."""
    y, params, lengths = tiny_data("gaussian", 3, 3)
    y = torch.nan_to_num(y)
    probs = torch.softmax(torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    table = fhmm.emission_log_prob(y, params)  # (N, T, S)
    states = fhmm.joint_states(3, 3)
    q_joint = probs[:, :, torch.arange(3), states].prod(-1)  # (N, T, S)
    torch.testing.assert_close(fhmm.expected_log_emission(y, params, probs), (table * q_joint).sum(-1), rtol=0, atol=1e-10)
    for c in range(3):
        others = q_joint / probs[:, :, c, states[:, c]]
        expected = torch.stack([(table * others * (states[:, c] == k)).sum(-1) for k in range(3)], -1)
        torch.testing.assert_close(fhmm.expected_log_emission(y, params, probs, chain=c), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_fixed_points_are_monotone_and_structured_beats_factorised(kind):
    """Coordinate ascent never lowers the ELBO; the structured optimum is at least the factorised one
    (from the same uniform start, and by construction when started from the factorised optimum); and
    every optimum is below log p(y)."""
    gen = torch.Generator().manual_seed(5)
    for seed in range(3):
        params = random_params(3, 2, 5, kind, seed=seed)
        y = torch.randn(4, 20, 5, generator=gen, dtype=torch.float64)
        if kind == "bernoulli":
            y = (y > 0).to(torch.float64)
        log_p = float(fhmm.log_evidence(y, params))
        fits = {f: fhmm.fit_mean_field(y, params, f, max_sweeps=300) for f in ("factorised", "structured")}
        for fit in fits.values():
            assert all(b >= a - 1e-9 * abs(a) for a, b in zip(fit.elbo, fit.elbo[1:]))
            assert fit.converged
            assert fit.elbo[-1] < log_p
        warm = fhmm.fit_mean_field(y, params, "structured", max_sweeps=300, init=fits["factorised"].q.marginals)
        assert warm.elbo[-1] >= fits["factorised"].elbo[-1] - 1e-9
        assert fits["structured"].elbo[-1] >= fits["factorised"].elbo[-1] - 1e-9


def test_structured_family_with_one_chain_is_exact():
    """With M = 1 the structured family contains the posterior: one sweep reaches log p(y) (KL = 0)."""
    y, params, lengths = tiny_data("gaussian", 1, 3)
    fit = fhmm.fit_mean_field(y, params, "structured", max_sweeps=3)
    torch.testing.assert_close(torch.tensor(fit.elbo[0], dtype=torch.float64), fhmm.log_evidence(y, params), rtol=0, atol=1e-10)
    post = fhmm.forward_backward(y, params)
    torch.testing.assert_close(fit.q.marginals * fhmm.step_mask(lengths, 4)[..., None, None], post.marginals, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,m,l", [("gaussian", 3, 2), ("gaussian", 2, 3), ("bernoulli", 3, 2), ("bernoulli", 1, 4)])
def test_baum_welch_never_decreases_the_likelihood(kind, m, l):
    truth = random_params(m, l, 5, kind, seed=11)
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(6, 15, 5, generator=gen, dtype=torch.float64)
    if kind == "bernoulli":
        y = (torch.rand(6, 15, 5, generator=gen, dtype=torch.float64) < 0.3).to(torch.float64)
    y[0, 10:] = float("nan")
    init = random_params(m, l, 5, kind, seed=12)
    fit = fhmm.fit_em(y, init, max_iter=30, tol=1e-12)
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(fit.log_likelihood, fit.log_likelihood[1:]))
    assert fit.log_likelihood[-1] > fit.log_likelihood[0] + 1.0
    del truth


def test_padding_rules_are_checked():
    y = torch.zeros(2, 4, 3, dtype=torch.float64)
    y[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="sequence 0 has NaN in step 1 next to numbers"):
        fhmm.sequence_lengths(y)
    y = torch.zeros(2, 4, 3, dtype=torch.float64)
    y[1, 1] = float("nan")
    with pytest.raises(ValueError, match="sequence 1 has NaN rows before its last observed step"):
        fhmm.sequence_lengths(y)
    y[1] = float("nan")
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        fhmm.sequence_lengths(y)
    with pytest.raises(ValueError, match=r"lengths must be \(N,\)"):
        fhmm.forward_backward(torch.zeros(2, 4, 3), random_params(2, 2, 3, "gaussian", 0), torch.tensor([4, 5]))


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("family", ["factorised", "structured"])
def test_variational_em_never_decreases_the_elbo(kind, family):
    """Ghahramani & Jordan's learning algorithm (fixed-point E-step, M-step on q's statistics) raises the ELBO
    every iteration, and its ELBO stays below the exact log-likelihood of the parameters it reaches."""
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(5, 12, 4, generator=gen, dtype=torch.float64)
    if kind == "bernoulli":
        y = (y > 0.5).to(torch.float64)
    y[1, 7:] = float("nan")
    fit = fhmm.fit_variational_em(y, random_params(3, 2, 4, kind, seed=3), family, max_iter=15, tol=1e-12)
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(fit.elbo, fit.elbo[1:]))
    assert fit.elbo[-1] > fit.elbo[0] + 1.0
    assert fit.elbo[-1] <= float(fhmm.log_evidence(y, fit.params)) / 5 + 1e-9


def test_gaussian_m_step_from_marginals_equals_the_joint_table_version():
    """For a mean-field q the cross-chain statistics E[s^m s^k^T] come from the marginals (no L^M table); they
    equal what the joint-table formula gives for the product distribution."""
    y, params, lengths = tiny_data("gaussian", 3, 2)
    q = random_q("structured", y, 3, 2, lengths, seed=1)
    table = fhmm._product_joint(q.marginals) * fhmm.step_mask(lengths, 4)[..., None]
    as_posterior = fhmm.Posterior(torch.zeros(3, dtype=torch.float64), q.marginals, q.pairwise, table)
    y0 = torch.nan_to_num(y)
    a = fhmm.m_step(y0, q, params, lengths)
    b = fhmm.m_step(y0, as_posterior, params, lengths)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-10)


def test_gaussian_m_step_is_exact_despite_the_singular_statistics():
    """E[s s^T] is singular (one-hot blocks), so W is defined up to per-chain offsets. A pseudo-inverse that
    kept round-off eigenvalues produced huge offsets and a covariance that lowered the ELBO in 10 of 22
    M-steps here (structured variational EM, Ghahramani & Jordan's sizes). Every M-step must raise
    E_q[log p(y, s)], so the ELBO at fixed q."""
    from vizoo.models import fhmm as model_fhmm
    from vizoo.models.datasets import DataOptions

    args = model_fhmm.FHMMArgs(3, 2, "gaussian")
    y = model_fhmm.synthetic(DataOptions(name="synthetic", num_points=20, num_steps=20, dim=5), args, 0).x
    params = model_fhmm.init_params(y, args, 0)
    lengths = fhmm.sequence_lengths(y)
    marginals = None
    for _ in range(25):
        q = fhmm.fit_mean_field(y, params, "structured", max_sweeps=1, init=marginals).q
        marginals = q.marginals
        new = fhmm.m_step(y, q, params, lengths)
        assert float(fhmm.elbo(y, new, q).sum()) >= float(fhmm.elbo(y, params, q).sum()) - 1e-9
        params = new


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("exact", [True, False])
def test_m_step_takes_nan_padded_data(kind, exact):
    """m_step is public: handed the NaN-padded data (as the data sets hold it) with its lengths, it returns the
    same finite parameters as on the zero-padded data fit_em gives it (0 * NaN is NaN, so the padding must be
    zeroed, not masked). A NaN inside a sequence is refused, naming it."""
    y, params, lengths = tiny_data(kind, 2, 2)
    q = fhmm.forward_backward(y, params, lengths) if exact else random_q("factorised", y, 2, 2, lengths, seed=1)
    padded = fhmm.m_step(y, q, params, lengths)
    zeroed = fhmm.m_step(torch.nan_to_num(y), q, params, lengths)
    for u, v in zip(padded, zeroed):
        if u is not None:
            assert torch.isfinite(u).all()
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    y[0, 1, 2] = float("nan")  # sequence 0 has length 4: this is a hole, not padding
    with pytest.raises(ValueError, match=r"y has NaN inside sequence 0 at step 1 \(its length is 4\)"):
        fhmm.m_step(y, q, params, lengths)
