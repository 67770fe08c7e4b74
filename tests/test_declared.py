"""Declared models: TOML declarations give the hand-written models' log-joint and evidence, their generated
guides keep the ELBO identities (property-based, random small declarations), and malformed declarations are
refused with the line and the field."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from vizoo.experiments.registry import MODELS, resolve
from vizoo.guides import declared as declared_guides
from vizoo.models import declared, gmm, lfdm, noisy_or
from vizoo.models.declaration import DeclarationError, load, parse
from vizoo.models.exact import declared as exact
from vizoo.models.exact import gmm as gmm_exact
from vizoo.models.exact import lfdm as lfdm_exact
from vizoo.models.exact import linear_gaussian
from vizoo.models.exact import noisy_or as noisy_or_exact
from vizoo.models.exact.declared import DeclaredParams

DIR = "experiments/models"


def _params(decl, tensors: dict[str, torch.Tensor]) -> DeclaredParams:
    slots = exact.layout(decl)
    assert set(tensors) == set(slots), (sorted(tensors), sorted(slots))
    for name, t in tensors.items():
        assert tuple(t.shape) == slots[name].shape, name
    return DeclaredParams(tensors, slots)


def _log_joint(model_fn, x, *args, latents: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum of log p over the sites of one run with the latents fixed: a scalar."""
    trace = poutine.trace(poutine.condition(model_fn, data=latents)).get_trace(x, *args)
    return trace.log_prob_sum()


# --------------------------------------------------------------------------- the hand-written models, declared


def test_declared_gmm_matches_the_handwritten_mixture():
    decl = load(f"{DIR}/declared_gmm.toml")
    truth = gmm.random_params(2, 2, seed=3, separation=2.0, covariance="diag")
    x, z = gmm.simulate(truth, 200, seed=4)
    p = _params(decl, {
        "z.logits": truth.weights.log(), "x.weight": truth.locs, "x.bias": torch.zeros(2, dtype=torch.float64),
        "x.scale_weight": truth.scales.log(), "x.scale_bias": torch.zeros(2, dtype=torch.float64),
    })
    _assert_same_model(decl, p, gmm.model, truth, x, "z", (z, 1 - z, torch.zeros_like(z)), gmm_exact.log_evidence)


def test_declared_noisy_or_matches_the_handwritten_network():
    decl = load(f"{DIR}/declared_noisy_or.toml")
    truth = noisy_or.random_network(3, 10, seed=5)
    s, d = noisy_or.simulate(truth, 300, seed=6)
    p = _params(decl, {"d.logits": truth.prior_logits, "s.weight": truth.weights, "s.leak": truth.leak})
    _assert_same_model(decl, p, noisy_or.model, truth, s, "d", (d, 1 - d, torch.ones_like(d)), noisy_or_exact.log_evidence)


def test_declared_lfdm_matches_the_handwritten_document_model():
    decl = load(f"{DIR}/declared_lfdm.toml")
    gen = torch.Generator().manual_seed(7)
    x = torch.poisson(torch.full((40, 50), 0.6, dtype=torch.float64), generator=gen)
    init = lfdm.init_params(x, lfdm.LFDMArgs(num_factors=4, hidden=(16,), init_scale=1.0), seed=8)
    (w0, b0), (w1, b1) = init.layers
    p = _params(decl, {"z.logits": init.prior_logits, "x.layers.0.weight": w0.T, "x.layers.0.bias": b0,
                       "x.layers.1.weight": w1.T, "x.layers.1.bias": b1})
    z = torch.bernoulli(torch.full((40, 4), 0.5, dtype=torch.float64), generator=gen)
    _assert_same_model(decl, p, lfdm.model, init, x, "z", (z, 1 - z), lfdm_exact.log_evidence)


def _assert_same_model(decl, params, hand_model, hand_params, x, site, latents, hand_evidence):
    """The declared model and a hand-written one: the same log-joint for each given value of the latent site,
    and the same exact log p(x), to 1e-10."""
    for value in latents:
        hand = _log_joint(hand_model, x, hand_params, latents={site: value})
        ours = _log_joint(partial_model(decl), x, params, latents={site: value})
        torch.testing.assert_close(ours, hand, atol=1e-10, rtol=0)
    torch.testing.assert_close(exact.log_evidence(decl, params, x), hand_evidence(x, hand_params), atol=1e-10, rtol=0)


def partial_model(decl):
    return lambda x, params: declared.model(decl, x, params)


# --------------------------------------------------------------------------- random small declarations


@st.composite
def declarations(draw):
    """TOML text of a random small declaration whose latent groups are all discrete."""
    lines = []
    latents = []
    for i in range(draw(st.integers(1, 2))):
        family = draw(st.sampled_from(["bernoulli", "categorical"]))
        size = draw(st.integers(1, 3)) if family == "bernoulli" else draw(st.integers(2, 4))
        latents.append((f"z{i}", family, size))
        lines += [f"[latent.z{i}]", f'family = "{family}"', f"size = {size}"]
        if i == 1 and draw(st.booleans()):  # a latent hierarchy: z0 -> z1
            kinds = ["linear", "mlp"] + (["noisy_or"] if family == "bernoulli" else [])
            kind = draw(st.sampled_from(kinds))
            lines += ["[link.z1]", 'from = ["z0"]', f'type = "{kind}"'] + (["hidden = [2]"] if kind == "mlp" else [])
    for j in range(draw(st.integers(1, 2))):
        family = draw(st.sampled_from(["bernoulli", "categorical", "gaussian"]))
        size = draw(st.integers(2, 3))
        parents = draw(st.lists(st.sampled_from([n for n, _, _ in latents]), min_size=1, unique=True))
        kinds = ["linear", "mlp"]
        if family == "bernoulli":
            kinds.append("noisy_or")
        kind = draw(st.sampled_from(kinds))
        lines += [f"[observed.x{j}]", f'family = "{family}"', f"size = {size}"]
        if family == "gaussian":
            scale = draw(st.sampled_from(['"shared"', '"linked"', "0.7"]))
            lines.append(f"scale = {scale}")
        lines += [f"[link.x{j}]", f"from = {parents!r}".replace("'", '"'), f'type = "{kind}"']
        if kind == "mlp":
            lines.append(f"hidden = [{draw(st.integers(1, 3))}]")
        if kind == "linear" and draw(st.booleans()):
            lines.append('constraint = "nonnegative"')
    return "\n".join(lines) + "\n"


def _random_guide(decl, x, kind: str, seed: int):
    pyro.set_rng_seed(seed)
    guide = (declared_guides.mean_field if kind == "mean_field" else declared_guides.amortised)(decl, x, hidden=(3,))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move every parameter off its zero start (the amortised net's last layer is zero)
        for p in guide.parameters():
            p.copy_(2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=declarations(), seed=st.integers(0, 2**16), kind=st.sampled_from(["mean_field", "amortised"]))
@torch.no_grad()
def test_elbo_identities_hold_for_generated_guides(text, seed, kind):
    decl = parse(text, "<random>")
    params = declared.random_params(decl, seed)
    x, _ = declared.simulate(decl, params, 5, seed + 1, doc_length=4)
    guide = _random_guide(decl, x, kind, seed)
    q = guide.probs(x)
    log_px = exact.log_evidence(decl, params, x)
    elbo = exact.elbo(decl, params, x, q)
    kl = exact.kl_to_posterior(decl, params, x, q)
    assert elbo <= log_px + 1e-9
    assert kl >= -1e-9
    assert math.isclose(float(elbo + kl), float(log_px), rel_tol=0, abs_tol=1e-8 * max(1.0, abs(float(log_px))))
    # Pyro's enumeration of the generated model alone is log p(x); of model and guide, the ELBO
    model_fn = config_enumerate(lambda x: declared.model(decl, x, params), "parallel")
    pyro_log_px = -TraceEnum_ELBO(max_plate_nesting=1).loss(model_fn, lambda x: None, x)
    assert math.isclose(pyro_log_px, float(log_px), rel_tol=0, abs_tol=1e-8 * max(1.0, abs(float(log_px))))
    pyro_elbo = -TraceEnum_ELBO(max_plate_nesting=1).loss(lambda x: declared.model(decl, x, params),
                                                         config_enumerate(guide, "parallel"), x)
    assert math.isclose(pyro_elbo, float(elbo), rel_tol=0, abs_tol=1e-8 * max(1.0, abs(float(elbo))))


def test_posterior_marginals_match_brute_force():
    """Marginals of the two-level diagnosis network against a loop over all 24 configurations."""
    decl = load(f"{DIR}/diagnosis.toml")
    params = declared.random_params(decl, 11)
    x, _ = declared.simulate(decl, params, 30, 12)
    post = exact.posterior(decl, params, x)
    weights, c_marg, d_marg = [], torch.zeros(30, 3, dtype=torch.float64), torch.zeros(30, 3, dtype=torch.float64)
    for c in range(3):
        for bits in range(8):
            d = torch.tensor([(bits >> k) & 1 for k in range(3)], dtype=torch.float64)
            latents = {"c": torch.full((30,), c), "d": d.expand(30, 3)}
            trace = poutine.trace(poutine.condition(lambda x: declared.model(decl, x, params), data=latents)).get_trace(x)
            trace.compute_log_prob()
            lj = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
            weights.append((lj, c, d))
    log_px = torch.logsumexp(torch.stack([w for w, _, _ in weights], -1), -1)
    for lj, c, d in weights:
        r = torch.exp(lj - log_px)
        c_marg[:, c] += r
        d_marg += r[:, None] * d
    torch.testing.assert_close(post.log_evidence, log_px, atol=1e-10, rtol=0)
    torch.testing.assert_close(post.marginals["c"], c_marg, atol=1e-10, rtol=0)
    torch.testing.assert_close(post.marginals["d"], d_marg, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["declared_gmm", "diagnosis"])
def test_generalised_em_never_decreases_log_likelihood(name):
    decl = load(f"{DIR}/{name}.toml")
    truth = declared.random_params(decl, 2)
    x, _ = declared.simulate(decl, truth, 300, 3)
    init = declared.init_params(decl, x, declared.DeclaredArgs(), 4)
    fit = exact.fit_em(decl, x, init, max_iter=60, tol=1e-9)
    steps = torch.tensor(fit.log_likelihood).diff()
    assert (steps >= -1e-9).all(), steps.min()
    assert fit.log_likelihood[-1] > fit.log_likelihood[0] + 0.05
    # the fit is at least as likely as the truth that generated the data, less a little (a local optimum)
    assert fit.log_likelihood[-1] >= float(exact.log_evidence(decl, truth, x)) / 300 - 0.05



# --------------------------------------------------------------------------- malformed declarations

GOOD = """\
name = "ok"

[latent.z]
family = "bernoulli"
size = 2

[latent.y]
family = "categorical"
size = 3

[observed.x]
family = "gaussian"
size = 2

[link.x]
from = ["z", "y"]
type = "linear"
"""


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


@pytest.mark.parametrize("old, new, needle, field, words", [
    ('family = "bernoulli"', 'family = "poisson"', 'family = "poisson"', "latent.z.family", "unknown value 'poisson'"),
    ('size = 2\n\n[latent.y]', 'size = 2\nprior = { probs = [0.1, 0.2, 0.3] }\n\n[latent.y]', "prior = ", "latent.z.prior.probs",
     "size mismatch: 3 values for a group of size 2"),
    ('type = "linear"', 'type = "noisy_or"', 'type = "noisy_or"', "link.x.type", "needs a bernoulli child"),
    ('type = "linear"', 'type = "linear"\nfunction = "softmax"', 'function = "softmax"', "link.x.function",
     "does not fit the gaussian group"),
    ('size = 3\n', 'size = 3\n\n[link.y]\nfrom = ["z"]\n\n[link.z]\nfrom = ["y"]\n', 'from = ["y"]', "link.z.from", "cycle"),
    ('size = 3\n', 'size = 3\ncolour = "blue"\n', "colour", "latent.y.colour", "unknown key 'colour'"),
    ('from = ["z", "y"]', 'from = ["z", "w"]', 'from = ["z", "w"]', "link.x.from", "no group named 'w'"),
    ('from = ["z", "y"]', 'from = ["z", "x"]', 'from = ["z", "x"]', "link.x.from", "observed group"),
    ('type = "linear"', 'type = "mlp"\nhidden = [0]', "hidden = [0]", "link.x.hidden", "between 1 and"),
    ('size = 2\n\n[link', 'size = 2\nscale = "wide"\n\n[link', 'scale = "wide"', "observed.x.scale", "unknown value 'wide'"),
    ('[link.x]\nfrom = ["z", "y"]\ntype = "linear"\n', "", "[observed.x]", "observed.x", "has no link"),
    ('size = 3\n', 'size = 3\nlearn_prior = false\n\n[link.y]\nfrom = ["z"]\n', "learn_prior", "latent.y.learn_prior",
     "no prior to learn"),
    ('size = 2\n\n[latent.y]', 'size = 2.5\n\n[latent.y]', "size = 2.5", "latent.z.size", "must be an integer"),
    ('from = ["z", "y"]', 'from = "z"', 'from = "z"', "link.x.from", "must be a non-empty list"),
    ('size = 2\n\n[latent.y]', 'size = 2\nprior = 3\n\n[latent.y]', "prior = 3", "latent.z.prior", "must be a table"),
    ('name = "ok"', 'name = "ok"\nplate = "z"', "[latent.z]", "latent.z", "also the plate's name"),
])
def test_malformed_declarations_name_the_line_and_field(old, new, needle, field, words):
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(DeclarationError) as err:
        parse(text, "bad.toml")
    message = str(err.value)
    assert f"bad.toml, line {_line_of(text, needle)}, {field}:" in message, message
    assert words in message, message
    assert "\n" not in message


def test_the_good_declaration_parses_and_orders_parents_first():
    decl = parse(GOOD.replace('size = 3\n', 'size = 3\n\n[link.y]\nfrom = ["z"]\n'), "good.toml")
    assert [g.name for g in decl.latents] == ["z", "y"]
    decl = parse(GOOD.replace('[latent.z]', '[link.z]\nfrom = ["y"]\n\n[latent.z]'), "good.toml")
    assert [g.name for g in decl.latents] == ["y", "z"]


def test_data_of_the_wrong_width_names_the_declared_size(tmp_path):
    text = (Path(DIR) / "declared_gmm.toml").read_text().replace("size = 2\nscale", "size = 3\nscale")
    path = tmp_path / "wide.toml"
    path.write_text(text)
    spec = resolve(str(path))
    from vizoo.models.datasets import DataOptions
    from vizoo.models.errors import DataError

    with pytest.raises(DataError, match=rf"wide.toml, line {_line_of(text, 'size = 3')}, observed.x.size: size mismatch"):
        spec.load(DataOptions(name="faithful"), spec.args_type(), 0)
    with pytest.raises(DataError, match="must be 0 or 1"):
        MODELS["declared_noisy_or"].validate(torch.full((4, 10), 0.5))
    with pytest.raises(DataError, match="a count"):
        MODELS["declared_lfdm"].validate(torch.full((4, 50), 1.5))


# --------------------------------------------------------------------------- the CLI


def test_show_prints_the_process_parameters_and_shapes(capsys):
    from vizoo.experiments.cli import main

    assert main(["show", f"{DIR}/diagnosis.toml"]) == 0
    out = capsys.readouterr().out
    assert "d_n | c_n ~ prod_j Bernoulli(sigmoid(eta))" in out
    assert "s_n | d_n ~ prod_j Bernoulli(1 - (1 - leak_s_j) exp(-(h W_s)_j))" in out
    assert "s.weight" in out and "(3, 10)" in out
    assert "24 joint configurations" in out
    assert "d dist 5 |  3" in out  # Pyro's shape table: the bits of d are one event of size 3


def test_show_refuses_a_handwritten_model_and_a_bad_file(tmp_path, capsys):
    from vizoo.experiments.cli import main

    assert main(["show", "gmm"]) == 2
    assert "hand-written" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('family = "gaussian"', 'family = "gamma"'))
    assert main(["show", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"line {_line_of(bad.read_text(), 'gamma')}, observed.x.family" in err


def test_run_a_declaration_by_path_end_to_end(tmp_path):
    """A declaration outside the bundle, named by its path in a config: exact reference and both guides."""
    from vizoo.experiments.config import load_config
    from vizoo.experiments.run import run_experiment

    decl_path = tmp_path / "mine.toml"
    decl_path.write_text((Path(DIR) / "diagnosis.toml").read_text().replace('name = "diagnosis"', 'name = "mine"'))
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(f'model = "{decl_path}"\noutput_dir = "{tmp_path}"\n[data]\nname = "std"\n'
                        '[svi]\nelbo = "TraceEnum_ELBO"\nsteps = 30\n[em]\nmax_iter = 5\n')
    result = run_experiment(load_config(cfg_path), progress=False, log=lambda *a: None)
    m = result.metrics
    assert m["model"] == "mine" and m["enumerable"] and m["status"] == "complete"
    for g in ("mean_field", "amortised"):
        r = m["guides"][g]
        assert r["final_elbo_per_point"] <= r["log_likelihood_per_point"] + 1e-12
        assert math.isclose(r["final_elbo_per_point"] + r["kl_per_point"], r["log_likelihood_per_point"], abs_tol=1e-10)
    assert m["exact"]["method"] == "generalised EM"
    assert (result.run_dir / "params" / "em.pt").exists()


# --------------------------------------------------------------------------- gaussian latents


def _fa_problem(n: int = 2000):
    decl = load(f"{DIR}/factor_analysis.toml")
    truth = declared.random_params(decl, 1)
    x, _ = declared.simulate(decl, truth, n, 2)
    return decl, truth, x


def test_factor_analysis_em_reaches_scikit_learns_maximum():
    from sklearn.decomposition import FactorAnalysis

    decl, truth, x = _fa_problem()
    fit = linear_gaussian.fit_em(decl, x, declared.init_params(decl, x, declared.DeclaredArgs(), 0), 5000, 1e-13)
    assert fit.converged
    assert (torch.tensor(fit.log_likelihood).diff() >= -1e-12).all()
    fa = FactorAnalysis(n_components=2, tol=1e-13, max_iter=100_000).fit(x.numpy())
    assert math.isclose(fit.log_likelihood[-1], fa.score(x.numpy()), abs_tol=1e-8)
    assert fit.log_likelihood[-1] >= float(linear_gaussian.log_evidence(decl, truth, x)) / x.shape[0]


@torch.no_grad()
def test_linear_gaussian_identities_and_pyro_agree():
    decl, truth, x = _fa_problem(300)
    gen = torch.Generator().manual_seed(3)
    q = {"z": (torch.randn(300, 2, generator=gen, dtype=torch.float64),
               0.1 + torch.rand(300, 2, generator=gen, dtype=torch.float64))}
    log_px = linear_gaussian.log_evidence(decl, truth, x)
    elbo = linear_gaussian.elbo(decl, truth, x, q)
    kl = linear_gaussian.kl_to_posterior(decl, truth, x, q)
    assert elbo <= log_px and kl >= 0
    torch.testing.assert_close(elbo + kl, log_px, atol=1e-8, rtol=0)
    # the closed form against Pyro's model and guide: log weights averaged over samples (4 standard errors)
    guide = declared_guides.mean_field(decl, x)
    guide.z_loc.copy_(q["z"][0])
    guide.z_scale = q["z"][1]
    pyro.set_rng_seed(0)
    lw = declared.log_weights(decl, x, truth, guide, 2000).sum(-1)  # (S,): the ELBO of every point, one sample each
    se = float(lw.std() / math.sqrt(lw.shape[0]))
    assert abs(float(lw.mean() - elbo)) < 4 * se, (float(lw.mean()), float(elbo), se)


@torch.no_grad()
def test_iwae_rises_to_the_exact_log_likelihood_from_below():
    """With the prior as proposal, IWAE_k is below log p(x) and reaches it as k grows (factor analysis, exact)."""
    decl, truth, x = _fa_problem(50)
    guide = declared_guides.mean_field(decl, x)  # starts at N(0, 1), the prior of the standard form
    exact_per_point = linear_gaussian.log_evidence_per_point(decl, truth, x)
    small = declared.importance_sampled(decl, x, truth, guide, 10, seed=0)
    large = declared.importance_sampled(decl, x, truth, guide, 20_000, seed=1)
    gap_small = float((exact_per_point - small.log_p).mean())
    gap_large = float((exact_per_point - large.log_p).mean())
    se_large = float(large.log_p_var.sum().sqrt()) / 50
    assert gap_small > gap_large > -3 * se_large
    assert gap_large < 0.05
    assert float((exact_per_point - large.elbo).mean()) > gap_small  # the ELBO is below both


@pytest.mark.parametrize("model, data, extra, reference", [
    ("declared_gmm", "faithful", {}, "generalised EM"),
    ("sigmoid_belief_net", "digits", {"data": {"subset": 60}}, "generalised EM"),
    ("factor_analysis", "iris", {"svi": {"elbo": "TraceMeanField_ELBO"}}, "exact EM (factor analysis)"),
    ("declared_vae", "digits", {"data": {"subset": 60}, "eval": {"importance_samples": 50}}, None),
    ("declared_lfdm", "synthetic", {"data": {"num_points": 40}}, "generalised EM"),
])
def test_bundled_declarations_run_end_to_end(tmp_path, model, data, extra, reference):
    from vizoo.experiments.config import parse_config
    from vizoo.experiments.run import run_experiment

    raw = {"name": model, "model": model, "output_dir": str(tmp_path), "data": {"name": data},
           "svi": {"steps": 20}, "em": {"max_iter": 5}, "guide_args": {"hidden": [8]}}
    for key, table in extra.items():
        raw[key] = {**raw.get(key, {}), **table}
    result = run_experiment(parse_config(raw), progress=False, log=lambda *a: None)
    m = result.metrics
    assert m["status"] == "complete"
    assert (m["exact"] or {}).get("method") == reference
    for g in ("mean_field", "amortised"):
        r = m["guides"][g]
        assert math.isfinite(r["final_elbo_per_point"])
        if reference is None:  # importance sampled: IWAE >= the ELBO of the same samples
            assert r["log_likelihood_per_point"] >= r["final_elbo_per_point"]
            assert r["log_likelihood_method"].startswith("IWAE")
        else:
            assert math.isclose(r["final_elbo_per_point"] + r["kl_per_point"], r["log_likelihood_per_point"], abs_tol=1e-9)
    assert (result.run_dir / "report.md").exists() and (result.run_dir / "metrics.json").exists()


def test_generalised_em_reaches_the_handwritten_mixtures_em_optimum():
    """Same model, same start (the hand-written k-means++ initialisation): closed-form EM and the declaration's
    generalised EM (L-BFGS M-steps) stop at the same maximum of log p(x) on Old Faithful."""
    from vizoo.models.datasets import DataOptions

    decl = load(f"{DIR}/declared_gmm.toml")
    x = MODELS["gmm"].load(DataOptions(name="faithful"), gmm.GMMArgs(), 0).x
    init = gmm.init_params(x, gmm.GMMArgs(2), 0)
    em = gmm_exact.fit_em(x, init, "diag", 0.0, 1000, 1e-13)
    zero = torch.zeros(2, dtype=torch.float64)
    start = _params(decl, {"z.logits": init.weights.log(), "x.weight": init.locs, "x.bias": zero,
                           "x.scale_weight": init.scales.log(), "x.scale_bias": zero.clone()})
    gem = exact.fit_em(decl, x, start, 1000, 1e-13)
    assert math.isclose(gem.log_likelihood[-1], float(em.log_likelihood[-1]), abs_tol=1e-9)
    fitted = gem.params
    locs = fitted["x.weight"] + fitted["x.bias"]
    order = locs[:, 0].argsort()
    torch.testing.assert_close(locs[order], em.params.locs[em.params.locs[:, 0].argsort()], atol=1e-5, rtol=0)


def test_the_readme_declaration_is_the_bundled_one_and_fits():
    """The declared mixture of Bernoullis in docs/models/declared.md is experiments/models/bernoulli_mixture.toml,
    and generalised EM on the digits raises log p(x) monotonically, with the generated guides' exact identities
    holding."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "models" / "declared.md").read_text(encoding="utf-8")
    (path, body), = re.findall(r"<!-- readme-declaration: (.+?) -->\n```toml\n(.*?)```", text, re.S)
    assert (Path(__file__).parents[1] / path).read_text(encoding="utf-8") == body
    decl = parse(body, path)
    spec = MODELS["bernoulli_mixture"]
    from vizoo.models.datasets import DataOptions

    x = spec.load(DataOptions(name="digits"), spec.args_type(), 0).x[:300]
    fit = exact.fit_em(decl, x, declared.init_params(decl, x, declared.DeclaredArgs(), 0), max_iter=15)
    assert (torch.tensor(fit.log_likelihood).diff() >= -1e-9).all()
    assert fit.log_likelihood[-1] > fit.log_likelihood[0] + 1.0
    guide = _random_guide(decl, x, "amortised", 0)
    with torch.no_grad():
        q = guide.probs(x)
        log_px = exact.log_evidence(decl, fit.params, x)
        elbo, kl = exact.elbo(decl, fit.params, x, q), exact.kl_to_posterior(decl, fit.params, x, q)
    assert elbo <= log_px
    torch.testing.assert_close(elbo + kl, log_px, atol=1e-8, rtol=0)


@st.composite
def linear_gaussian_declarations(draw):
    """TOML text of a random factor-analysis-like declaration: gaussian roots, linear links to gaussian groups."""
    lines, latents = [], []
    for i in range(draw(st.integers(1, 2))):
        size = draw(st.integers(1, 3))
        latents.append(f"z{i}")
        loc = draw(st.sampled_from(["0.0", "0.5"]))
        scales = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=size, max_size=size))
        scale = draw(st.sampled_from(["1.0", str(scales)]))
        lines += [f"[latent.z{i}]", 'family = "gaussian"', f"size = {size}", f"prior = {{ loc = {loc}, scale = {scale} }}"]
    for j in range(draw(st.integers(1, 2))):
        parents = draw(st.lists(st.sampled_from(latents), min_size=1, unique=True))
        scale = draw(st.sampled_from(['"shared"', "0.8"]))
        lines += [f"[observed.x{j}]", 'family = "gaussian"', f"size = {draw(st.integers(1, 3))}", f"scale = {scale}",
                  f"[link.x{j}]", f"from = {parents!r}".replace("'", '"'), 'type = "linear"']
    return "\n".join(lines) + "\n"


@settings(max_examples=30, deadline=None)
@given(text=linear_gaussian_declarations(), seed=st.integers(0, 2**16))
@example(text='[latent.z0]\nfamily = "gaussian"\nsize = 2\nprior = { loc = 0.0, scale = 1.0 }\n[latent.z1]\nfamily = "gaussian"\n'
         'size = 2\nprior = { loc = 0.0, scale = [0.5, 0.5] }\n[observed.x0]\nfamily = "gaussian"\nsize = 2\nscale = "shared"\n'
         '[link.x0]\nfrom = ["z1", "z0"]\ntype = "linear"\n', seed=1)  # ELBO and KL of 9e7 (found by a fresh clone's run)
@torch.no_grad()
def test_linear_gaussian_identities_on_random_declarations(text, seed):
    decl = parse(text, "<random>")
    assert linear_gaussian.applies(decl)
    params = declared.random_params(decl, seed)
    x, _ = declared.simulate(decl, params, 6, seed + 1)
    # log p(x) against the joint Gaussian built group by group in z (not through the standard form)
    mean = torch.cat([sum((params[f"{p}.loc"] @ _rows(decl, params, g.name, p) for p in decl.links[g.name].parents),
                          params[f"{g.name}.bias"]) for g in decl.observed])
    loadings = torch.cat([torch.cat([_rows(decl, params, g.name, z.name) if z.name in decl.links[g.name].parents
                                     else torch.zeros(z.size, g.size, dtype=torch.float64) for g in decl.observed], -1)
                          for z in decl.latents])  # (K, D)
    prior_var = torch.cat([params[f"{z.name}.scale"] ** 2 for z in decl.latents])
    noise = torch.cat([(params[f"{g.name}.scale"] if g.scale == "shared" else torch.full((g.size,), g.scale, dtype=torch.float64)) ** 2
                       for g in decl.observed])
    cov = loadings.T @ torch.diag(prior_var) @ loadings + torch.diag(noise)
    direct = torch.distributions.MultivariateNormal(mean, cov).log_prob(x).sum()
    log_px = linear_gaussian.log_evidence(decl, params, x)
    torch.testing.assert_close(log_px, direct, atol=1e-9, rtol=0)
    guide = _random_guide(decl, x, "mean_field", seed)
    q = guide.probs(x)
    elbo, kl = linear_gaussian.elbo(decl, params, x, q), linear_gaussian.kl_to_posterior(decl, params, x, q)
    assert elbo <= log_px + 1e-9 and kl >= -1e-9
    # round-off of the sum grows with its terms: a random q far from the posterior has ELBO and KL of 9e7 against
    # log p(x) = -32 (an error of 4e-7 there, 20 ulps of the terms), hence the second part of the tolerance
    tol = 1e-8 * max(1.0, abs(float(log_px))) + 1e-12 * max(abs(float(elbo)), abs(float(kl)))
    assert math.isclose(float(elbo + kl), float(log_px), abs_tol=tol)


def _rows(decl, params, child: str, parent: str) -> torch.Tensor:
    """The rows of child's weight that parent feeds: (parent size, child size)."""
    start = 0
    for p in decl.links[child].parents:
        if p == parent:
            return params[f"{child}.weight"][start:start + decl.groups[p].size]
        start += decl.groups[p].size
    raise KeyError(parent)


def test_a_mixture_of_factor_analysers_trains_with_enumeration_and_is_importance_sampled(tmp_path):
    """Discrete and gaussian latents together: TraceEnum_ELBO sums the component and samples the factors; with no
    exact reference the run reports IWAE log p(x), which is above the ELBO estimate of the same samples."""
    from vizoo.experiments.config import parse_config
    from vizoo.experiments.run import run_experiment

    text = """
name = "mfa"
[latent.c]
family = "categorical"
size = 2
[latent.z]
family = "gaussian"
size = 1
[observed.x]
family = "gaussian"
size = 2
[link.x]
from = ["c", "z"]
type = "linear"
[data]
x = "faithful"
"""
    path = tmp_path / "mfa.toml"
    path.write_text(text)
    spec = resolve(str(path))
    assert spec.exact is None and spec.importance is not None
    assert "TraceEnum_ELBO" in spec.guides["amortised"].valid_elbos
    raw = {"name": "mfa", "model": str(path), "output_dir": str(tmp_path), "data": {"name": "faithful"},
           "svi": {"elbo": "TraceEnum_ELBO", "steps": 200, "lr": 0.05}, "eval": {"importance_samples": 200}}
    m = run_experiment(parse_config(raw), progress=False, log=lambda *a: None).metrics
    for g in ("mean_field", "amortised"):
        r = m["guides"][g]
        assert r["log_likelihood_per_point"] >= r["final_elbo_per_point"]
        assert r["elbo_curve"][-1] > r["elbo_curve"][0]  # training raised the bound


@torch.no_grad()
def test_linear_gaussian_best_diagonal_q_is_a_maximum():
    decl, truth, x = _fa_problem(100)
    best = linear_gaussian.best_mean_field(decl, truth, x)
    top = float(linear_gaussian.elbo(decl, truth, x, best))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        loc, scale = best["z"]
        shifted = {"z": (loc + 0.05 * torch.randn(loc.shape, generator=gen, dtype=torch.float64),
                         scale * torch.exp(0.1 * torch.randn(scale.shape, generator=gen, dtype=torch.float64)))}
        assert float(linear_gaussian.elbo(decl, truth, x, shifted)) <= top + 1e-9
    assert top < float(linear_gaussian.log_evidence(decl, truth, x))
