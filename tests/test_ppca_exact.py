"""Probabilistic PCA (models.exact.ppca; issue 6, started): the linear-Gaussian VAE's exact reference.
log p(x) equals the multivariate normal marginal and scikit-learn's PPCA score at the MLE; ELBO + KL =
log p(x) to 1e-8 for diagonal and full Gaussian q with KL from the two Gaussians (not from the ELBO); the
ELBO touches log p(x) at the posterior; the MLE is a stationary point no perturbation improves."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from vizoo.models.exact import ppca


def random_case(d: int = 6, k: int = 2, n: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = ppca.PPCAParams(torch.randn(d, k, generator=gen, dtype=torch.float64),
                             torch.randn(d, generator=gen, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2
    return x, params, gen


def test_log_evidence_is_the_gaussian_marginal():
    x, params, _ = random_case()
    mvn = torch.distributions.MultivariateNormal(params.bias, ppca.marginal_cov(params))
    torch.testing.assert_close(ppca.log_evidence(x, params), mvn.log_prob(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["diagonal", "full", "posterior"])
def test_elbo_plus_kl_is_log_evidence(kind):
    x, params, gen = random_case()
    n, k = x.shape[0], 2
    if kind == "diagonal":
        q = ppca.GaussianQ(torch.randn(n, k, generator=gen, dtype=torch.float64), torch.rand(n, k, generator=gen, dtype=torch.float64) + 0.05)
    elif kind == "full":
        a = torch.randn(n, k, k, generator=gen, dtype=torch.float64)
        q = ppca.GaussianQ(torch.randn(n, k, generator=gen, dtype=torch.float64), a @ a.transpose(1, 2) + 0.1 * torch.eye(k, dtype=torch.float64))
    else:
        q = ppca.posterior(x, params)
    bound, kl = ppca.elbo(x, params, q), ppca.kl_to_posterior(x, params, q)
    log_p = ppca.log_evidence(x, params)
    torch.testing.assert_close(bound + kl, log_p, rtol=0, atol=1e-8)
    if kind == "posterior":
        torch.testing.assert_close(kl, torch.zeros_like(kl), rtol=0, atol=1e-10)  # the bound touches
    else:
        assert (kl > 0).all() and (bound < log_p).all()


def test_elbo_matches_monte_carlo():
    """The closed-form ELBO is the expectation it claims: 200,000 draws from q agree within 5 standard errors."""
    x, params, gen = random_case(n=3)
    q = ppca.GaussianQ(torch.randn(3, 2, generator=gen, dtype=torch.float64), torch.rand(3, 2, generator=gen, dtype=torch.float64) + 0.1)
    h = q.mean + q.cov.sqrt() * torch.randn(200_000, 3, 2, generator=gen, dtype=torch.float64)
    lik = torch.distributions.Normal(h @ params.weight.T + params.bias, params.noise_var.sqrt()).log_prob(x).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(h).sum(-1)
    log_q = torch.distributions.Normal(q.mean, q.cov.sqrt()).log_prob(h).sum(-1)
    draws = lik + prior - log_q
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - ppca.elbo(x, params, q)).abs() < 5 * se).all()


def test_mle_matches_scikit_learn_and_is_a_maximum():
    """On the digits: at scikit-learn's PPCA parameters our log p(x) equals its PCA score (an independent
    implementation) to 1e-10; its variances use n - 1, so its fit is not quite the MLE, and ours scores
    higher; no small perturbation of W, b or sigma^2 raises the MLE's likelihood."""
    x = torch.as_tensor(load_digits().data, dtype=torch.float64) / 16.0
    k = 10
    mle = ppca.fit_mle(x, k)
    ours = float(ppca.log_evidence(x, mle).mean())
    pca = PCA(n_components=k).fit(x.numpy())
    sk = pca.score(x.numpy())
    var = torch.as_tensor(pca.explained_variance_) - pca.noise_variance_
    theirs = ppca.PPCAParams(torch.as_tensor(pca.components_).T * var.sqrt(), torch.as_tensor(pca.mean_),
                             torch.tensor(pca.noise_variance_, dtype=torch.float64))
    assert abs(float(ppca.log_evidence(x, theirs).mean()) - sk) < 1e-10 * abs(sk)
    assert sk < ours < sk + 1e-4
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        moved = ppca.PPCAParams(mle.weight + 1e-3 * torch.randn(mle.weight.shape, generator=gen, dtype=torch.float64),
                                mle.bias + 1e-3 * torch.randn(mle.bias.shape, generator=gen, dtype=torch.float64),
                                mle.noise_var * (1 + 1e-3 * float(torch.randn(1, generator=gen))))
        assert float(ppca.log_evidence(x, moved).mean()) < ours
    with pytest.raises(ValueError, match="1 <= num_latents < dim = 64"):
        ppca.fit_mle(x, 64)


def test_best_diagonal_q_is_a_maximum_of_the_elbo_over_diagonal_gaussians():
    """The closed form (posterior mean, variances 1 / diag(precision)) against perturbations of every point's mean
    and log-variances: none raises the ELBO of any point; it is below log p(x) by the KL of a correlated posterior."""
    x, params, gen = random_case()
    best = ppca.best_diagonal(x, params)
    top = ppca.elbo(x, params, best)
    for _ in range(20):
        shifted = ppca.GaussianQ(best.mean + 0.05 * torch.randn(best.mean.shape, generator=gen, dtype=torch.float64),
                                 best.cov * torch.exp(0.1 * torch.randn(best.cov.shape, generator=gen, dtype=torch.float64)))
        assert (ppca.elbo(x, params, shifted) <= top + 1e-12).all()
    gap = ppca.log_evidence(x, params) - top
    torch.testing.assert_close(gap, ppca.kl_to_posterior(x, params, best), rtol=0, atol=1e-10)
    assert (gap > 0).all()
