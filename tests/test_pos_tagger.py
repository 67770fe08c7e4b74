"""The log-linear part-of-speech tagger against exact answers.

* forward-backward's log p(w), tag marginals and expected transition counts equal brute-force enumeration of
  every tag path (itertools.product) to 1e-10, with sentences of different lengths in one padded batch, cut into
  chunks; padding does not change any sentence's numbers;
* the Pyro model's log-joint is the exact one; ELBO + KL = log p(w) for every guide's q, KL summed over all paths
  with q's own path probabilities (the LinearChain's log_prob, or the product of marginals);
* EM never lowers its objective (the driver raises on a fall), with and without the priors; EM recovers the tags
  of simulated data; the mean-field fixed point climbs and bounds the guide; the accuracies agree with sklearn;
* the real corpora load when python3-pattern is installed (skipped otherwise) and are refused in one line when not.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
from vizoo.experiments.config import bundled_configs, load_config
from vizoo.experiments.registry import MODELS
from vizoo.experiments.run import run_experiment
from vizoo.guides import pos_tagger as guides
from vizoo.models import pos_tagger as tagger
from vizoo.models.datasets import DataOptions, tagged
from vizoo.models.errors import DataError
from vizoo.models.exact import pos_tagger as exact


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids waiting on a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seed=0, num_tags=3, vocab=7, lengths=(4, 1, 5, 2), scale=1.0, features=exact.FEATURES):
    """Random parameters over a made-up vocabulary and a padded batch of sentences of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    args = tagger.TaggerArgs(num_tags=num_tags, features=features, weight_scale=scale)
    table, home = tagger.synthetic_vocabulary(vocab, num_tags, seed)
    params = tagger.true_params(args, table, home, seed)
    params = params._replace(init_logits=torch.randn(num_tags, generator=gen, dtype=torch.float64))
    x = torch.full((len(lengths), max(lengths), 7), float("nan"), dtype=torch.float64)
    for n, length in enumerate(lengths):
        x[n, :length] = table[torch.randint(vocab, (length,), generator=gen)].double()
    return x, params


def test_forward_backward_is_brute_force_enumeration():
    x, params = tiny()
    for chunk in (exact.CHUNK, 1, 3):  # one chunk, one sentence per chunk, mixed lengths per chunk
        words, lengths, _ = exact.word_ids(x)
        c = exact.chain(params.init_logits, params.trans_logits, exact.token_log_emission(x, params), lengths, chunk=chunk)
        for n in range(x.shape[0]):
            log_z, marginals, transitions, _ = exact.brute_force(x, params, n)
            length = int(lengths[n])
            assert abs(float(c.log_normaliser[n] - log_z)) < 1e-10
            torch.testing.assert_close(c.marginals[n, :length], marginals, atol=1e-10, rtol=0)
            assert float(c.marginals[n, length:].abs().sum()) == 0
            torch.testing.assert_close(c.transitions[n], transitions, atol=1e-10, rtol=0)


def test_padding_does_not_change_a_sentences_numbers():
    x, params = tiny(lengths=(3, 6, 2))
    batch = exact.forward_backward(x, params)
    for n in range(x.shape[0]):
        length = int(exact.word_ids(x)[1][n])
        alone = exact.forward_backward(x[n : n + 1, :length], params)
        assert abs(float(alone.log_evidence[0] - batch.log_evidence[n])) < 1e-12
        torch.testing.assert_close(alone.marginals[0], batch.marginals[n, :length], atol=1e-12, rtol=0)
        torch.testing.assert_close(alone.transitions[0], batch.transitions[n], atol=1e-12, rtol=0)
    wider = torch.cat([x, torch.full((3, 4, 7), float("nan"), dtype=x.dtype)], 1)  # more padding
    torch.testing.assert_close(exact.forward_backward(wider, params).log_evidence, batch.log_evidence, atol=1e-12, rtol=0)


def test_the_pyro_model_scores_the_exact_log_joint():
    x, params = tiny()
    _, lengths, _ = exact.word_ids(x)
    tags = torch.randint(params.num_tags, x.shape[:2], generator=torch.Generator().manual_seed(1))
    conditioned = pyro.poutine.condition(tagger.model, data={"t": tags})
    trace = pyro.poutine.trace(conditioned).get_trace(x, params)
    trace.compute_log_prob()
    pyro_log_joint = trace.nodes["t"]["log_prob"] + trace.nodes["w"]["log_prob"]  # (N,)
    for n in range(x.shape[0]):
        _, _, _, (paths, log_post) = exact.brute_force(x, params, n)
        length = int(lengths[n])
        path = (paths == tags[n, :length]).all(1).nonzero()[0, 0]
        log_z = exact.forward_backward(x[n : n + 1], params).log_evidence[0]
        assert abs(float(pyro_log_joint[n] - (log_post[path] + log_z))) < 1e-10
    assert abs(float(trace.nodes["prior"]["log_prob_sum"] - exact.log_prior(params))) < 1e-12


def _brute_force_kl(x, params, guide, n):
    """KL(q(t_n) || p(t_n | w_n)) over every path, with q's path probabilities from the guide itself."""
    _, _, _, (paths, log_post) = exact.brute_force(x, params, n)
    length = paths.shape[1]
    log_init, log_trans, log_unary = guide.potentials(x)
    if guide.factorised:
        log_q_steps = torch.log_softmax(log_unary[n, :length], -1)
        log_q = log_q_steps[torch.arange(length), paths].sum(1)
    else:
        one = guide.potentials(x)
        _, lengths, mask = exact.word_ids(x)
        chain = tagger.LinearChain(one[0], one[1], (one[2] * mask[..., None])[n : n + 1, :length], lengths[n : n + 1])
        log_q = chain.log_prob(paths[:, None])[:, 0]
    q = torch.exp(log_q)
    assert abs(float(q.sum()) - 1) < 1e-10
    return float((q * (log_q - log_post)).sum())


@pytest.mark.parametrize("name", ["mean_field", "structured_mean_field", "amortised"])
def test_elbo_plus_kl_is_log_evidence_for_every_guides_q(name):
    x, params = tiny()
    torch.manual_seed(0)
    guide = getattr(guides, name)(x, params)
    with torch.no_grad():  # move q away from its start so nothing is uniform
        for p in guide.parameters():
            p.add_(0.7 * torch.randn_like(p))
        q = guide.probs(x, params)
        elbo, kl = exact.elbo(x, params, q), exact.kl(x, params, q)
        log_p = exact.forward_backward(x, params).log_evidence
        torch.testing.assert_close(elbo + kl, log_p, atol=1e-10, rtol=0)
        assert (kl > 1e-6).all()
        for n in range(x.shape[0]):
            assert abs(_brute_force_kl(x, params, guide, n) - float(kl[n])) < 1e-10


def test_the_chain_family_reaches_the_posterior_and_mean_field_climbs_below_it():
    x, params = tiny()
    log_p = exact.forward_backward(x, params).log_evidence
    post = exact.posterior(x, params)
    torch.testing.assert_close(exact.kl(x, params, post), torch.zeros_like(log_p), atol=1e-10, rtol=0)
    chain = guides.structured_mean_field(x, params, start="posterior")
    torch.testing.assert_close(exact.kl(x, params, chain.probs(x, params)), torch.zeros_like(log_p), atol=1e-10, rtol=0)
    fit = exact.fit_mean_field(x, params)
    assert all(b >= a - 1e-9 for a, b in zip(fit.elbo, fit.elbo[1:]))
    best = exact.elbo(x, params, fit.q)
    assert (best <= log_p + 1e-10).all() and float((log_p - best).sum()) > 1e-4  # mean field is not exact here
    start = exact.elbo(x, params, guides.mean_field(x, params).probs(x, params))
    assert (best >= start - 1e-10).all()


@pytest.mark.parametrize("scale, concentration", [(0.0, 1.0), (1.0, 1.0), (0.5, 2.0)])
def test_em_never_lowers_its_objective(scale, concentration):
    args = tagger.TaggerArgs(num_tags=4, weight_scale=scale, concentration=concentration)
    data = tagger.synthetic(DataOptions(name="synthetic", num_points=40, num_steps=8, vocab_size=40), args, 3)
    x = tagger.validate_data(data.x, args)
    init = tagger.init_params(x, args, 0)
    fit = exact.fit_em(x, init, max_iter=15, tol=0.0, on_decrease="raise")  # a fall beyond round-off raises
    assert fit.num_iters == 15 and fit.objective[-1] > fit.objective[0] + 0.1
    if scale == 0.0 and concentration == 1.0:  # no priors: the objective is log p(w)
        assert fit.objective == pytest.approx(fit.log_likelihood, abs=1e-12)
        assert all(b >= a - 1e-9 for a, b in zip(fit.log_likelihood, fit.log_likelihood[1:]))


def test_em_recovers_the_tags_of_simulated_sentences():
    args = tagger.TaggerArgs(num_tags=4)
    data = tagger.synthetic(DataOptions(name="synthetic", num_points=400, num_steps=10, vocab_size=40), args, 0)
    x = tagger.validate_data(data.x, args)
    fit = exact.fit_em(x, tagger.init_params(x, args, 0), max_iter=40, tol=1e-8)
    post = exact.forward_backward(x, fit.params)
    scores = tagger.evaluate(post.marginals.argmax(-1), data.labels)
    tokens = int((data.labels >= 0).sum())
    truth = float(exact.log_evidence(x, data.truth)) / tokens
    assert scores["many_to_one"] > 0.9 and scores["one_to_one"] > 0.9, scores
    assert fit.log_likelihood[-1] * x.shape[0] / tokens > truth - 0.02  # per token: at least the truth's, nearly


def test_the_accuracies_agree_with_sklearn():
    from sklearn.metrics import v_measure_score

    gen = torch.Generator().manual_seed(0)
    gold = torch.randint(5, (6, 9), generator=gen)
    predicted = torch.where(torch.rand(6, 9, generator=gen) < 0.7, (gold + 1) % 5, torch.randint(7, (6, 9), generator=gen))
    gold[0, 5:] = -1  # padding is ignored
    scores = tagger.evaluate(predicted, gold)
    keep = gold >= 0
    assert scores["v_measure"] == pytest.approx(v_measure_score(gold[keep].numpy(), predicted[keep].numpy()), abs=1e-12)
    perfect = tagger.evaluate((gold + 2) % 5, gold)
    assert perfect["many_to_one"] == perfect["one_to_one"] == pytest.approx(1.0) and perfect["v_measure"] == pytest.approx(1.0)
    assert scores["one_to_one"] <= scores["many_to_one"]


def test_bad_tokens_are_refused_in_one_line():
    x, _ = tiny()
    args = tagger.TaggerArgs(num_tags=3)
    bad = x.clone()
    bad[0, 0, 1] = bad[0, 0, 1] + 100  # the same word with another suffix id
    with pytest.raises(DataError, match="different features"):
        tagger.validate_data(bad, args)
    with pytest.raises(DataError, match=r"\(num_sentences, num_steps, 7\)"):
        tagger.validate_data(x[..., :3], args)
    hole = x.clone()
    hole[2, 1] = float("nan")  # padding inside a sentence
    with pytest.raises(DataError, match="NaN rows before"):
        tagger.validate_data(hole, args)


def test_a_missing_corpus_is_one_line_saying_how_to_install_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install python3-pattern") as err:
        tagged.tagged("wsj", corpora_dir=tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not (tagged.CORPORA_DIR / tagged.FILES["wsj"]).is_file(), reason="python3-pattern is not installed")
def test_the_real_corpora_load_and_their_tags_stay_aside():
    spec = MODELS["pos_tagger"]
    args = tagger.TaggerArgs(num_tags=45)
    data = spec.load(DataOptions(name="wsj", subset=50), args, 0)
    assert data.x.shape[0] == 50 and data.x.shape[-1] == 7
    lengths = exact.word_ids(data.x)[1]
    assert ((data.labels >= 0).sum(1) == lengths).all()
    sentence = tagged.tagged("wsj", subset=1)
    assert sentence.words[:2] == ("Pierre", "Vinken") and sentence.tag_names[int(sentence.tags[0, 0])] == "NNP"
    init = spec.init_params(data.x, args, 0)
    with torch.no_grad():
        q = spec.guides["mean_field"].build(data.x, init).probs(data.x, init)
        log_p = float(spec.exact.log_evidence(data.x, init))
        total = float(spec.exact.elbo(data.x, init, q)) + float(spec.exact.kl(data.x, init, q))
    assert math.isclose(total, log_p, rel_tol=1e-10)


# --- variational Bayes for the Dirichlet transitions (Johnson 2007) -------------------------------------------


def test_the_vb_bound_is_its_definition_by_enumeration():
    """At any q(A) = Dir(beta) and the optimal chain q(t), the closed-form bound of ``vb_e_step`` equals
    E_q[log p(w, t | A)] + H[q(t)] - KL(q(A) || p(A)) + log p(W) computed independently: every tag path of every
    sentence enumerated, E[log A] by digamma, the KL by torch.distributions."""
    x, params = tiny(seed=4, lengths=(3, 1, 4))
    params = params._replace(concentration=torch.tensor(0.5, dtype=torch.float64))
    k = params.num_tags
    beta = 0.3 + torch.rand(k, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    words, lengths, _ = exact.word_ids(x)
    _, bound = exact.vb_e_step(x, params, beta, lengths)
    e_log_a = exact.expected_log_dirichlet(beta)
    log_pi, log_e = torch.log_softmax(params.init_logits, -1), exact.log_emission(params)
    total = 0.0
    for n in range(x.shape[0]):
        length = int(lengths[n])
        paths = torch.tensor(list(itertools.product(range(k), repeat=length)), dtype=torch.long)
        steps = torch.arange(length)
        score = log_pi[paths[:, 0]] + log_e[words[n, :length]][steps, paths].sum(1) + e_log_a[paths[:, :-1], paths[:, 1:]].sum(1)
        q = torch.softmax(score, 0)  # the optimal q(t) given q(A): proportional to exp E_q(A)[log p(w, t | A)]
        total = total + (q * score).sum() - (q * torch.log(q)).sum()
    prior = torch.distributions.Dirichlet(torch.full((k,), 0.5, dtype=torch.float64))
    kl = torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta), prior).sum()
    log_p_w = -0.5 * (params.weights**2).sum() / params.weight_scale**2
    torch.testing.assert_close(bound, total - kl + log_p_w, rtol=0, atol=1e-10)


def test_vb_never_lowers_its_bound_and_stays_below_the_marginal_likelihood():
    """Coordinate ascent raises the bound at every iteration (the driver raises on a fall), q(A) holds every
    transition once; and at the end the bound is below log p(w | pi, W) + log p(W) with A integrated out,
    estimated by averaging p(w | A) over 200,000 draws of A from its prior (one short sentence, K = 2; every
    path enumerated per draw, checked against forward-backward on the first draws)."""
    args = tagger.TaggerArgs(num_tags=4)
    data = tagger.synthetic(DataOptions(name="synthetic", num_points=40, num_steps=8, vocab_size=40), args, 3)
    x = tagger.validate_data(data.x, args)
    init = tagger.init_params(x, args, 0)._replace(concentration=torch.tensor(0.5, dtype=torch.float64))
    fit = exact.fit_vb(x, init, max_iter=12, tol=0.0, on_decrease="raise")
    assert fit.num_iters == 12 and fit.elbo[-1] > fit.elbo[0] + 0.1
    _, lengths, _ = exact.word_ids(x)
    assert float(fit.beta.sum()) == pytest.approx(0.5 * 16 + float((lengths - 1).sum()), abs=1e-8)

    x1, params = tiny(seed=2, num_tags=2, lengths=(3,))
    params = params._replace(concentration=torch.tensor(0.7, dtype=torch.float64))
    fitted = (fit1 := exact.fit_vb(x1, params, max_iter=30, tol=0.0, lbfgs_iters=5)).params
    torch.manual_seed(0)
    draws = torch.distributions.Dirichlet(torch.full((2, 2), 0.7, dtype=torch.float64)).sample((200_000,))
    words, _, _ = exact.word_ids(x1)
    log_e = exact.log_emission(fitted)[words[0, :3]]  # (3, 2)
    log_pi = torch.log_softmax(fitted.init_logits, -1)
    paths = torch.tensor(list(itertools.product(range(2), repeat=3)))
    scores = (log_pi[paths[:, 0]] + log_e[torch.arange(3), paths].sum(1))[None] + \
        torch.log(draws)[:, paths[:, :-1], paths[:, 1:]].sum(-1)  # (S, P): log p(w, t | A_s)
    per_draw = torch.logsumexp(scores, -1)  # log p(w | A_s)
    check = torch.stack([exact.forward_backward(x1, fitted._replace(trans_logits=torch.log(a))).log_evidence[0]
                         for a in draws[:200]])
    torch.testing.assert_close(per_draw[:200], check, rtol=0, atol=1e-10)
    weights = torch.exp(per_draw - per_draw.max())
    estimate = float(per_draw.max() + torch.log(weights.mean()))
    se = float(weights.std() / weights.mean() / math.sqrt(len(weights)))  # of the log, by the delta method
    log_p_w = float(-0.5 * (fitted.weights**2).sum() / fitted.weight_scale**2)
    assert fit1.elbo[-1] <= estimate + log_p_w + 4 * se, (fit1.elbo[-1], estimate + log_p_w, se)


# --------------------------------------------------------------------------- Bayesian transitions inside SVI


def _vb_setup(seed=4):
    x, params = tiny(seed=seed, lengths=(3, 1, 4, 2))
    params = params._replace(concentration=torch.tensor(0.5, dtype=torch.float64))
    k = params.num_tags
    beta = 0.3 + torch.rand(k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    return x, params, beta


def test_vb_elbo_touches_the_closed_form_bound_at_the_optimal_q_and_is_below_it_elsewhere():
    """vb_elbo (any q(t)) equals vb_e_step's bound at vb_e_step's own q(t), and is lower for every other q(t) of the
    chain family (the optimal q(t) given q(A) is that chain: the gap is KL(q(t) || q*(t)) >= 0)."""
    x, params, beta = _vb_setup()
    _, lengths, mask = exact.word_ids(x)
    c, bound = exact.vb_e_step(x, params, beta, lengths)
    # the same chain as a Variational: its entropy from the chain with E[log A] potentials, unnormalised
    log_unary = exact.token_log_emission(x, params, lengths)
    e_log_a = exact.expected_log_dirichlet(beta)
    energy = (c.marginals[:, 0] * torch.log_softmax(params.init_logits, -1)).sum(-1)
    energy = energy + (c.transitions * e_log_a).sum((-1, -2)) + ((c.marginals * log_unary).sum(-1) * mask).sum(1)
    q_star = exact.Variational(c.marginals, c.transitions, c.log_normaliser - energy)
    torch.testing.assert_close(exact.vb_elbo(x, params, q_star, beta), bound, rtol=0, atol=1e-10)
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        other = exact.chain_variational(torch.randn(params.num_tags, generator=gen, dtype=torch.float64),
                                        torch.randn(params.num_tags, params.num_tags, generator=gen, dtype=torch.float64),
                                        torch.randn(log_unary.shape, generator=gen, dtype=torch.float64), lengths)
        assert float(exact.vb_elbo(x, params, other, beta)) < float(bound) - 1e-6


def test_the_structured_vb_guide_contains_vbs_optimal_q_and_its_elbo_is_the_bound():
    """The structured guide with q(A) = Dir(beta): with A^q = E[log A] and the row sums of exp E[log A] folded into
    the pseudo-emissions (every position but a sentence's last), its q(t) is VB's optimal chain and its
    analytic ELBO (the Analytic_ELBO objective) equals vb_e_step's bound to 1e-10."""
    x, params, beta = _vb_setup()
    _, lengths, mask = exact.word_ids(x)
    _, bound = exact.vb_e_step(x, params, beta, lengths)
    e_log_a = exact.expected_log_dirichlet(beta)
    log_rows = torch.logsumexp(e_log_a, -1)  # log sum_k exp E[log A_jk] < 0
    not_last = torch.arange(x.shape[1])[None] < (lengths - 1)[:, None]
    unary = exact.token_log_emission(x, params, lengths) + log_rows * not_last[..., None]
    guide = guides.structured_mean_field_vb(x, params)
    with torch.no_grad():
        guide.unary.copy_(unary)
        guide.trans_logits.copy_(e_log_a)
        guide.init_logits.copy_(params.init_logits)
        guide.beta = beta.clone()  # through the positive constraint's unconstrained value
    torch.testing.assert_close(guide.analytic_elbo(x, params), bound, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["mean_field_vb", "structured_mean_field_vb", "amortised_vb"])
def test_the_vb_guides_monte_carlo_elbo_is_their_closed_form(name):
    """Trace_ELBO on model_vb and each VB guide (A drawn from q(A) = Dir(beta), tag paths from q(t)) averages to the
    guide's closed-form bound: the Pyro model's Dirichlet prior, transitions and factor are the ones vb_elbo uses.
    Tolerance: 5 standard errors of the 4,000-draw mean."""
    x, params, _ = _vb_setup(seed=5)
    guide = getattr(guides, name)(x, params)
    model = tagger.TaggerVB(params)
    with torch.no_grad():
        closed = float(guide.analytic_elbo(x, model.params))
        pyro.set_rng_seed(0)
        draws = torch.tensor([-pyro.infer.Trace_ELBO().loss(model, guide, x) for _ in range(4000)])
    se = float(draws.std() / math.sqrt(len(draws)))
    assert abs(float(draws.mean()) - closed) < 5 * se, (float(draws.mean()), closed, se)


def test_the_vb_run_reports_the_closed_form_bound_and_scores_tags_against_gold(tmp_path):
    """vizoo's pos_tagger_vb experiment end to end: Johnson's VB reference and SVI with q(A) q(t); each guide's
    final bound is the closed form at the fitted parameters (pi, W, E_q[log A]) and equals the last value of its
    training trace up to the last step's change; SVI raised it; every method is scored against the gold tags
    (many-to-one, one-to-one, V-measure in [0, 1]) and the table is in the run's report."""
    cfg = load_config(bundled_configs()["pos_tagger_vb_synthetic"], ["data.num_points=60", "svi.steps=300", "progress=false", f"output_dir={str(tmp_path)!r}",
                                                                        "guides=[\"mean_field\", \"structured_mean_field\"]"])
    lines = []
    result = run_experiment(cfg, log=lines.append)
    m = result.metrics
    for g in m["guides"].values():
        curve = g["elbo_curve"]
        assert g["final_elbo_method"].startswith("closed form")
        assert curve[-1] > curve[0] + 1.0
        assert abs(g["final_elbo_per_point"] - curve[-1]) <= abs(curve[-1] - curve[-2]) + 1e-3
    assert set(m["labels"]) == {m["exact"]["method"], "SVI mean_field", "SVI structured_mean_field"}
    for values in m["labels"].values():
        assert set(values) == {"many_to_one", "one_to_one", "v_measure"} and all(0 <= v <= 1 for v in values.values())
    assert "| method | many_to_one | one_to_one | v_measure |" in lines[-1]


def test_the_vb_models_concentration_may_be_below_one_but_must_be_positive():
    assert tagger.TaggerVBArgs(concentration=0.1).concentration == 0.1
    with pytest.raises(ValueError, match="concentration must be a positive number, got 0"):
        tagger.TaggerVBArgs(concentration=0.0)
    with pytest.raises(ValueError, match="concentration must be >= 1"):
        tagger.TaggerArgs(concentration=0.5)
