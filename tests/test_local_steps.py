"""Local optimisation inside SVI (guides/local.py; ``guide_args.local_steps``).

For each family with free per-point parameters, the local update must do what coordinate ascent does: leave the
points at a fixed point of the family's updates (applied again, it changes nothing, to 1e-8 in float64) without
lowering any point's ELBO (each update maximises the ELBO over a block, so it never decreases; 1e-10 allows
round-off of sums of O(100) terms). The GMM's family contains the posterior, so its update is exact: the ELBO of
each point equals log p(x_n) to round-off. Runs without the option take exactly the steps they took before;
runs with it resume bit for bit.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from conftest import assert_same_run, killed_run
from pyro.infer import Trace_ELBO
from vizoo.experiments.compare import base_config, tiny_overrides
from vizoo.experiments.config import apply_override, parse_config
from vizoo.experiments.registry import MODELS
from vizoo.experiments.run import load_data, prepare, resume_experiment
from vizoo.experiments.train import train_svi
from vizoo.guides import gmm as gmm_guides
from vizoo.guides import vae as vae_guides
from vizoo.models.errors import ConfigError
from vizoo.models.exact import fhmm as fhmm_exact
from vizoo.models.exact import gmm as gmm_exact
from vizoo.models.exact import mixture, ppca

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


DATA = {"fhmm": "synthetic"}  # Ghahramani & Jordan's sizes (L = 2, Gaussian emissions), not the chorales
EXTRA = {"vae": ("guide_args.hidden=[32]",)}  # the bundled config's network size, for runs without the encoder


def tiny_config(model: str, out, *extra: str):
    """The model's bundled config (its synthetic one where DATA says) at smoke-test sizes: 12 SVI steps, a
    checkpoint every 4 (as conftest's tiny_config)."""
    import json

    raw, _ = base_config(MODELS[model], DATA.get(model))
    for item in (*tiny_overrides(), "svi.steps=12", "checkpoint.every_steps=4", "checkpoint.every_seconds=0",
                 "progress=false", f"output_dir={json.dumps(str(out))}", *EXTRA.get(model, ()), *extra):
        apply_override(raw, item)
    raw["name"] = model
    return parse_config(raw)


def prepared(model: str, tmp_path, *extra: str):
    """The model's tiny run, prepared (data, initial parameters, guides) and its learnable model at the start."""
    cfg = tiny_config(model, tmp_path, *extra)
    prep = prepare(cfg, cfg.spec, load_data(cfg, cfg.spec))
    return prep, cfg.spec.learnable(prep.init, cfg.model_args)


def some_points(n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[: max(2, n // 2)]


def test_gmm_local_update_is_the_exact_posterior(tmp_path):
    prep, model = prepared("gmm", tmp_path)
    guide = prep.guides["mean_field"]
    assert guide.local_steps == 1 and not guide.logits_unconstrained.requires_grad  # on by default, frozen
    x, idx = prep.x, some_points(prep.x.shape[0])
    before = guide.logits.detach().clone()
    guide.local_update(x, idx, model)
    after = guide.logits.detach()
    rest = torch.ones(x.shape[0], dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(after[rest], before[rest])  # only the step's points move
    log_joint = gmm_exact.log_joint(x, model.params).detach()
    q = torch.softmax(after, -1)
    point_elbo = (torch.special.xlogy(q, q) * -1 + q * log_joint).sum(-1)
    torch.testing.assert_close(point_elbo[idx], log_joint.logsumexp(-1)[idx], atol=1e-10, rtol=0)  # gap 0
    assert float(mixture.kl_to_posterior(log_joint[idx], q[idx])) < 1e-10


def test_gmm_with_local_steps_climbs_log_p(tmp_path):
    """With TraceEnum_ELBO and q at the posterior before every step, each step's ELBO is log p(x) at the step's
    parameters: SVI is gradient ascent on log p(x)."""
    prep, model = prepared("gmm", tmp_path, "guides=['mean_field']", "svi.elbo='TraceEnum_ELBO'")
    x = prep.x
    logs = []
    original = gmm_guides.MeanField.local_update

    def record(self, x, idx, model, final=False):
        logs.append(float(gmm_exact.log_evidence(x, model.params)) / x.shape[0])
        original(self, x, idx, model, final)

    gmm_guides.MeanField.local_update = record
    try:
        result = train_svi(model, prep.guides["mean_field"], x, prep.cfg.svi, seed=0, progress=False)
    finally:
        gmm_guides.MeanField.local_update = original
    assert len(logs) == result.steps + 1  # one per step, one after the last
    torch.testing.assert_close(torch.tensor(result.elbo_trace), torch.tensor(logs[:-1]), atol=1e-10, rtol=0)
    # after the last step the update puts q at the posterior of the final parameters: no gap left at all
    guide, params = prep.guides["mean_field"], model.params.detach()
    assert float(gmm_exact.kl_to_posterior(x, params, guide.probs(x))) / x.shape[0] < 1e-10


def _fixed_point_case(model: str, guide_name: str, tmp_path, sweeps: int = 1000, *extra: str):
    prep, learnable = prepared(model, tmp_path, f"guides=['{guide_name}']", f"guide_args.local_steps={sweeps}", *extra)
    guide = prep.guides[guide_name]
    guide.local_tol = 0.0  # every sweep until no gain at all
    return prep, learnable, guide


@pytest.mark.parametrize("model", ["noisy_or", "lfdm"])
def test_binary_local_update_reaches_a_cavi_fixed_point(model, tmp_path):
    prep, learnable, guide = _fixed_point_case(model, "mean_field", tmp_path)
    x, params, ref = prep.x, learnable.params.detach(), prep.spec.exact
    idx = some_points(x.shape[0])
    start = ref.point_elbo(x, params, guide.probs(x).detach())
    guide.local_update(x, idx, learnable)
    once = guide.probs(x).detach().clone()
    after = ref.point_elbo(x, params, once)
    assert (after[idx] - start[idx]).min() >= -1e-10  # no point's ELBO fell
    assert (after[idx] - start[idx]).max() > 1e-3  # and the update did something
    guide.local_update(x, idx, learnable)
    torch.testing.assert_close(guide.probs(x).detach(), once, atol=1e-8, rtol=0)  # a fixed point


@pytest.mark.parametrize("guide_name", ["mean_field", "structured_mean_field"])
def test_fhmm_local_update_reaches_the_families_fixed_point(guide_name, tmp_path):
    prep, learnable, guide = _fixed_point_case("fhmm", guide_name, tmp_path, 300, "data.num_points=8")
    y, params = prep.x, learnable.params.detach().to(prep.x.dtype)
    start = fhmm_exact.elbo(y, params, guide.variational(y)).detach()
    guide.local_update(y, None, learnable)
    q = guide.variational(y)
    after = fhmm_exact.elbo(y, params, q).detach()
    assert (after - start).min() >= -1e-10 * max(1.0, float(start.abs().max()))
    assert (after - start).max() > 1e-3
    guide.local_update(y, None, learnable)
    again = guide.variational(y)
    torch.testing.assert_close(again.marginals, q.marginals, atol=1e-8, rtol=0)
    torch.testing.assert_close(again.pairwise, q.pairwise, atol=1e-8, rtol=0)


def test_vae_inner_steps_raise_the_batchs_elbo(tmp_path):
    """The linear VAE is PPCA: the per-point ELBO of a Gaussian q is closed form, and the inner Adam steps on
    the batch's (loc, log scale), decoder fixed, raise it (from N(0, I), by far more than their Monte Carlo noise)."""
    prep, decoder = prepared("vae", tmp_path, "model_args.linear=true", "model_args.likelihood='gaussian'",
                             "model_args.latent_sizes=[2]", "guides=['mean_field']", "guide_args.local_steps=200")
    guide, x = prep.guides["mean_field"], prep.x
    idx = some_points(x.shape[0])
    torch.manual_seed(0)
    with torch.no_grad():
        before = ppca.elbo(x, decoder.ppca(), guide.probs(x))
        guide.local_update(x, idx, decoder)
        after = ppca.elbo(x, decoder.ppca(), guide.probs(x))
    assert float((after - before).sum()) > 1.0


@pytest.mark.parametrize("model, guide_name, builder", [("gmm", "mean_field", gmm_guides.MeanField),
                                                       ("vae", "mean_field", vae_guides.MeanField)])
def test_without_local_steps_runs_are_unchanged(model, guide_name, builder, tmp_path, monkeypatch):
    """local_steps = 0: the loop draws nothing and calls nothing more; a guide class without the hook at all
    takes the same steps bit for bit."""
    traces = []
    for strip in (False, True):
        prep, learnable = prepared(model, tmp_path, f"guides=['{guide_name}']", "guide_args.local_steps=0")
        guide = prep.guides[guide_name]
        assert all(p.requires_grad for p in guide.parameters())
        if strip:
            monkeypatch.delattr(builder, "local_update")
        result = train_svi(learnable, guide, prep.x, prep.cfg.svi, seed=0, progress=False)
        traces.append((result.elbo_trace, {k: v.clone() for k, v in guide.state_dict().items()}))
    assert traces[0][0] == traces[1][0]
    assert all(torch.equal(traces[0][1][k], traces[1][1][k]) for k in traces[0][1])


@pytest.mark.parametrize("model, extra", [
    ("vae", ("guides=['mean_field']", "guide_args.local_steps=2", "svi.batch_size=10")),  # minibatch draws in the loop
    ("fhmm", ("guides=['mean_field']", "guide_args.local_steps=3")),
])
def test_resume_with_local_steps_is_bit_for_bit(model, extra, tmp_path, monkeypatch):
    cfg = tiny_config(model, tmp_path, *extra)
    a, killed = killed_run(cfg, tmp_path, monkeypatch, 2)  # after step 8 of 12
    resume_experiment(killed, log=lambda *_: None)
    assert_same_run(a, killed)


def test_local_steps_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"guide_args.local_steps must be >= 0, got -1"):
        tiny_config("gmm", tmp_path, "guide_args.local_steps=-1")
    with pytest.raises(ConfigError, match=r"guide_args.local_steps=3 does not apply"):
        tiny_config("gmm", tmp_path, "guides=['amortised']", "guide_args.local_steps=3")


def _adam_reference(decoder, x, i: int, start: list[torch.Tensor], lr: float, rngs: list) -> list[torch.Tensor]:
    """One continuous torch.optim.Adam run on point i's (loc, log scale) of every layer, decoder fixed: for each
    (steps, rng state) in ``rngs``, that RNG state, then that many steps on -ELBO_i (one reparameterised sample;
    the batch's loss times B / N = 1 / N, as the guide scales it)."""
    params = [s.clone().requires_grad_() for s in start]
    half = len(params) // 2
    optim = torch.optim.Adam(params, lr=lr)

    def guide(x, subsample):
        with pyro.plate("points", x.shape[0], subsample=subsample):
            for l in range(half):
                pyro.sample(f"h{l + 1}", vae_guides._normal(params[l], params[half + l].exp(), True))

    for steps, rng in rngs:
        torch.set_rng_state(rng)
        for _ in range(steps):
            optim.zero_grad()
            loss = Trace_ELBO().differentiable_loss(decoder, guide, x, subsample=torch.tensor([i])) / x.shape[0]
            params_grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, params_grads):
                p.grad = g
            optim.step()
    return [p.detach() for p in params]


def test_vae_point_keeps_its_adam_state_between_its_batches(tmp_path):
    """Each point's inner Adam continues where it left off when the point was last in a batch: with the decoder
    fixed, two visits of k steps (another point's visit between them) are one continuous Adam run of 2k steps
    on the point's own ELBO, given the same Monte Carlo draws. float64, 6 steps of O(1) values: the only
    difference is the order of a few float operations per step (torch's addcdiv against our division), so 1e-12.
    A fresh Adam at the second visit (its moments and bias correction restarted) is off by far more."""
    k, lr = 3, 0.05
    prep, decoder = prepared("vae", tmp_path, "dtype='float64'", "guides=['mean_field']",
                             f"guide_args.local_steps={k}", f"guide_args.local_lr={lr}")
    guide, x = prep.guides["mean_field"], prep.x
    assert guide.local_lr == lr and x.dtype == torch.float64
    for p in decoder.parameters():
        p.requires_grad_(False)
    i, j = 3, 5
    start = [guide.loc1[i:i + 1].clone(), guide.loc2[i:i + 1].clone(),
             guide.scale1[i:i + 1].log(), guide.scale2[i:i + 1].log()]
    first = torch.get_rng_state()
    guide.local_update(x, torch.tensor([i]), decoder)
    guide.local_update(x, torch.tensor([j]), decoder)
    second = torch.get_rng_state()
    guide.local_update(x, torch.tensor([i]), decoder)
    assert guide.local_t.tolist() == [2 * k if n == i else k if n == j else 0 for n in range(x.shape[0])]
    got = [guide.loc1[i:i + 1], guide.loc2[i:i + 1], guide.scale1[i:i + 1].log(), guide.scale2[i:i + 1].log()]
    want = _adam_reference(decoder, x, i, start, lr, [(k, first), (k, second)])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    restarted = _adam_reference(decoder, x, i, _adam_reference(decoder, x, i, start, lr, [(k, first)]), lr, [(k, second)])
    assert max(float((g - r).abs().max()) for g, r in zip(got, restarted)) > 1e-4
    state = guide.state_dict()  # the moments are per-point state, saved with the parameters
    assert {"local_m_loc1", "local_v_logscale2", "local_t"} <= state.keys()
    assert float(state["local_v_loc1"][i].abs().min()) > 0 and float(state["local_m_loc1"][0].abs().max()) == 0


def test_vae_local_lr_is_checked(tmp_path):
    for bad in ("0", "-0.1"):
        with pytest.raises(ConfigError, match=rf"guide_args.local_lr must be > 0, got {bad}"):
            tiny_config("vae", tmp_path, f"guide_args.local_lr={bad}")
    with pytest.raises(ConfigError, match=r"guide_args.local_lr must be a finite number, got nan"):
        tiny_config("vae", tmp_path, "guide_args.local_lr=nan")
    with pytest.raises(ConfigError, match=r"guide_args.local_lr=0.1 does not apply"):
        tiny_config("vae", tmp_path, "guides=['amortised']", "guide_args.local_lr=0.1")
    with pytest.raises(ValueError, match=r"guide_args.local_lr must be a number > 0, got -1"):
        vae_guides.check_local_lr(-1)
    assert vae_guides.check_local_lr(None) == vae_guides.LOCAL_LR
