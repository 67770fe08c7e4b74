"""Every registered model, hand-written or declared, through the same checks: synthetic data load and validate,
the guides build from the shared initialisation, and where the model is exact, ELBO <= log p(x) and
ELBO + KL = log p(x) for every guide at the initial parameters."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from vizoo.experiments.config import GuideArgs
from vizoo.experiments.registry import MODELS
from vizoo.models.datasets import DataOptions

WITH_SYNTHETIC = [spec for spec in MODELS.values() if "synthetic" in spec.datasets]


def test_every_model_but_the_vae_has_synthetic_data():
    assert {s.name for s in MODELS.values()} - {s.name for s in WITH_SYNTHETIC} == {"vae"}


@pytest.mark.parametrize("spec", WITH_SYNTHETIC, ids=lambda s: s.name)
@torch.no_grad()
def test_guides_keep_the_exact_identities_at_the_start(spec):
    args = spec.args_type()
    data = spec.load(DataOptions(name="synthetic", num_points=25, dim=12, num_steps=6, vocab_size=30, doc_length=8), args, 0)
    x = data.x
    init = spec.init_params(x, args, 0)
    pyro.set_rng_seed(0)
    exact = spec.exact is not None and spec.exact.enumerable and not spec.exact_size_error(args)
    log_px = float(spec.exact.log_evidence(x, init)) if exact else None
    for name, g in spec.guides.items():
        with torch.enable_grad():  # builders may fit a network
            guide = g.build(x, init, **GuideArgs().for_builder(g.build))
        if not exact or not hasattr(guide, "probs"):
            continue
        q = guide.probs(x, init)
        elbo, kl = float(spec.exact.elbo(x, init, q)), float(spec.exact.kl(x, init, q))
        assert elbo <= log_px + 1e-9, name
        assert kl >= -1e-9, name
        assert math.isclose(elbo + kl, log_px, abs_tol=1e-8 * max(1.0, abs(log_px))), name
        if g.optimum is not None:  # the family's best member bounds the guide and is bounded by log p(x)
            best = float(spec.exact.elbo(x, init, g.optimum(x, init)))
            assert elbo <= best + 1e-9 * max(1.0, abs(best)) and best <= log_px + 1e-9, (name, elbo, best, log_px)


def test_synthetic_lda_refuses_fewer_words_than_topics():
    """Found by the registry test: with data.dim < num_topics a topic owned no word and the simulator divided 0 by 0."""
    from vizoo.models.errors import DataError

    spec = MODELS["lda"]
    with pytest.raises(DataError, match=r"data.dim=4 .*num_topics=10"):
        spec.load(DataOptions(name="synthetic", num_points=5, dim=4), spec.args_type(), 0)


@pytest.mark.parametrize("spec", [s for s in MODELS.values() if s.exact is not None and s.exact.enumerable], ids=lambda s: s.name)
def test_every_exact_models_guides_name_their_familys_optimum(spec):
    """The approximation gap needs the best member of each guide's family; every guide of an exact model but
    the collapsed GMM (no local q) and the non-linear VAE's names one."""
    for name, g in spec.guides.items():
        if spec.name == "gmm" and name == "marginal":
            continue
        assert g.optimum is not None, (spec.name, name)


@torch.no_grad()
def test_the_mixtures_optimum_is_its_exact_posterior_and_the_declared_cavi_is_the_binary_engines():
    """A single categorical group: mean field is exact (KL of the optimum = 0). The declared noisy-OR's CAVI
    takes the binary engine's steps (same units, same order), so the two optima agree."""
    from vizoo.models import noisy_or
    from vizoo.models.declaration import load
    from vizoo.models.exact import declared as declared_exact
    from vizoo.models.exact import noisy_or as noisy_or_exact
    from vizoo.models.exact.declared import DeclaredParams

    spec = MODELS["declared_gmm"]
    data = spec.load(DataOptions(name="faithful"), spec.args_type(), 0)
    init = spec.init_params(data.x, spec.args_type(), 0)
    q = spec.guides["mean_field"].optimum(data.x, init)
    assert float(spec.exact.kl(data.x, init, q)) < 1e-10

    decl = load("experiments/models/declared_noisy_or.toml")
    truth = noisy_or.random_network(3, 10, seed=5)
    s, _ = noisy_or.simulate(truth, 200, seed=6)
    p = DeclaredParams({"d.logits": truth.prior_logits, "s.weight": truth.weights, "s.leak": truth.leak},
                       declared_exact.layout(decl))
    ours = declared_exact.best_mean_field(decl, p, s)
    theirs = noisy_or_exact.best_mean_field(s, truth, init=torch.full((200, 3), 0.5, dtype=torch.float64))
    assert (torch.tensor(ours.elbo).diff() >= -1e-9).all()
    torch.testing.assert_close(ours.probs["d"], theirs.probs, atol=1e-8, rtol=0)
    kl = float(declared_exact.kl_to_posterior(decl, p, s, ours.probs))
    assert kl > 1e-3  # explaining away: the best mean field is not exact here
