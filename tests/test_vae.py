"""VAE (models.vae, guides.vae; issue 6, started): the linear one-layer case is probabilistic PCA, so Pyro's
ELBO estimates are checked against the closed form, and SVI against the maximum-likelihood solution;
the two-layer model and hierarchical guide run and learn; bad images are refused."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from experiments.config import SVIConfig
from experiments.train import train_svi
from guides import vae as guides
from models import vae
from models.datasets import DataOptions
from models.errors import DataError
from models.exact import ppca

pyro.settings.set(module_local_params=True)
LINEAR = vae.VAEArgs(latent_sizes=(3,), likelihood="gaussian", linear=True)


def digits(args: vae.VAEArgs, subset: int = 0) -> torch.Tensor:
    return vae.validate_data(vae.digits(DataOptions(name="digits", subset=subset), args, 0).x, args)


@pytest.mark.parametrize("build", [guides.mean_field, guides.amortised], ids=["mean_field", "amortised"])
def test_pyro_estimate_is_unbiased_for_the_ppca_elbo(build):
    """The mean of 400 Trace_ELBO estimates (model and guide sites, reparameterised) is within 4 standard
    errors of the closed-form PPCA ELBO of the guide's q(h | x); and ELBO + KL = log p(x) there."""
    x = digits(LINEAR, subset=50)
    init = vae.init_params(x, LINEAR, 0)
    guide = build(x, init)
    with torch.no_grad():
        for p in guide.parameters():  # an arbitrary point of the family
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
        pyro.set_rng_seed(0)
        draws = torch.tensor([-Trace_ELBO().loss(init, guide, x) for _ in range(400)], dtype=torch.float64)
        q = guide.probs(x)
        closed = ppca.elbo(x, init.ppca(), q)
        torch.testing.assert_close(closed + ppca.kl_to_posterior(x, init.ppca(), q), ppca.log_evidence(x, init.ppca()),
                                   rtol=0, atol=1e-8)
    se = float(draws.std()) / 20
    assert abs(float(draws.mean()) - float(closed.sum())) < 4 * se


def test_svi_reaches_the_ppca_maximum_likelihood():
    """Amortised SVI on 500 digits (K = 3) ends within 0.01 nats per point of Tipping & Bishop's closed-form
    MLE log-likelihood, and never above it."""
    x = digits(LINEAR, subset=500)
    best = float(ppca.log_evidence(x, ppca.fit_mle(x, 3)).mean())
    init = vae.init_params(x, LINEAR, 0)
    decoder, guide = vae.learnable(init, LINEAR), guides.amortised(x, init, hidden=(50,))
    train_svi(decoder, guide, x, SVIConfig(steps=1500, lr=0.01, lr_final=0.001), seed=0, progress=False)
    with torch.no_grad():
        reached = float(ppca.log_evidence(x, decoder.ppca()).mean())
    assert best - 0.01 < reached <= best + 1e-9, (reached, best)


def test_two_layer_vae_beats_independent_pixels_on_binary_digits():
    """A decoder that ignores h (zero weights, bias = logit of each pixel's mean) with q = the prior has
    ELBO = the log-likelihood of independent pixels, so that is a point of both families. Two-layer SVI with
    the hierarchical amortised guide must end above it: it has learned dependence between pixels."""
    args = vae.VAEArgs(latent_sizes=(8, 4), hidden=(64,))
    x = digits(args, subset=500)
    p = x.mean(0).clamp(1e-6, 1 - 1e-6)
    independent = float((x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(1).mean())
    init = vae.init_params(x, args, 0)
    decoder, guide = vae.learnable(init, args), guides.amortised(x, init, hidden=(64,))
    r = train_svi(decoder, guide, x, SVIConfig(steps=400, lr=0.01, num_particles=4), seed=0, progress=False)
    print(f"independent pixels {independent:.3f}, start {r.elbo_trace[0]:.3f}, end {sum(r.elbo_trace[-20:]) / 20:.3f}")
    assert sum(r.elbo_trace[-20:]) / 20 > independent


def test_bad_images_are_refused():
    args = vae.VAEArgs()
    with pytest.raises(DataError, match=r"binary pixels \(0 or 1\), but point 0, pixel 1 is 255.0 .*rescale to \[0, 1\]"):
        vae.validate_data(torch.tensor([[0.0, 255.0]]), args)
    with pytest.raises(DataError, match=r"point 1, pixel 0 is 0.5 .*: binarise"):
        vae.validate_data(torch.tensor([[0.0, 1.0], [0.5, 1.0]]), args)
    with pytest.raises(DataError, match="flatten each image"):
        vae.validate_data(torch.zeros(2, 8, 8), args)
    with pytest.raises(DataError, match="pixel 0 is nan"):
        vae.validate_data(torch.tensor([[float("nan"), 0.5]]), args)
    with pytest.raises(ValueError, match="probabilistic PCA: one layer"):
        vae.VAEArgs(latent_sizes=(2, 2), likelihood="gaussian", linear=True)
    with pytest.raises(DataError, match="must be below the data's dimension 2"):
        vae.validate_data(torch.zeros(3, 2), vae.VAEArgs(latent_sizes=(2,), likelihood="gaussian", linear=True))


def test_cli_run_of_the_linear_vae(tmp_path):
    """vizoo run: the PPCA MLE row, exact ELBO / log p(x) / KL for both guides (ELBO + KL = log p(x))."""
    import json

    from experiments.cli import main

    cfg = tmp_path / "vae.toml"
    cfg.write_text('model = "vae"\n[data]\nname = "digits"\nsubset = 100\n[model_args]\nlatent_sizes = [2]\n'
                   'likelihood = "gaussian"\nlinear = true\n[guide_args]\nhidden = [16]\n[svi]\nsteps = 20\nlr = 0.01\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["enumerable"] and metrics["exact"]["method"] == "closed-form MLE (PPCA)"
    for g in ("mean_field", "amortised"):
        m = metrics["guides"][g]
        assert abs(m["final_elbo_per_point"] + m["kl_per_point"] - m["log_likelihood_per_point"]) < 1e-9
        assert m["log_likelihood_per_point"] <= metrics["exact"]["log_likelihood_per_point"] + 1e-9


def test_nonlinear_vae_with_the_exact_reference_is_refused():
    from experiments.config import parse_config
    from models.errors import ConfigError

    with pytest.raises(ConfigError, match=r"exact reference \(probabilistic PCA\) needs model_args.linear = true; set em.enabled = false"):
        parse_config({"name": "t", "model": "vae", "data": {"name": "digits"}})
