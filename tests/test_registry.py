"""Every registered model, hand-written or declared, through the same checks: synthetic data load and validate,
the guides build from the shared initialisation, and where the model is exact, ELBO <= log p(x) and
ELBO + KL = log p(x) for every guide at the initial parameters."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from experiments.config import GuideArgs
from models import MODELS
from models.datasets import DataOptions

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


def test_synthetic_lda_refuses_fewer_words_than_topics():
    """Found by the registry test: with data.dim < num_topics a topic owned no word and the simulator divided 0 by 0."""
    from models.errors import DataError

    spec = MODELS["lda"]
    with pytest.raises(DataError, match=r"data.dim=4 .*num_topics=10"):
        spec.load(DataOptions(name="synthetic", num_points=5, dim=4), spec.args_type(), 0)
