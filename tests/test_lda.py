"""LDA through Pyro: the model and guides (models.lda, guides.lda) against the closed-form references.

What is asserted, and why the tolerances are what they are:
* The closed-form ELBO of any mean-field q over count entries equals the token-by-token ELBO, and at
  CAVI's optimal phi it equals CAVI's collapsed form (1e-10: the same sums in another order).
* Pyro's estimators are unbiased for it: the mean of 400 TraceEnum_ELBO estimates (theta, beta sampled;
  z summed) lies within 4 standard errors of the closed form, with and without plate subsampling (the
  subsampled estimate is rescaled by D / B; a missing or doubled rescaling moves the mean by >> 4 SE).
* On the tiny enumerable corpus, a Pyro guide's ELBO <= log p(w) and log p(w) - ELBO = KL to 1e-10.
* SVI with the mean-field guide reaches CAVI's ELBO per token within 0.01 nats (about 0.3% of the
  ELBO; what 1,200 Adam steps with a decaying rate leave of the Monte Carlo noise).
* Topics of a synthetic corpus are recovered: after matching by permutation (Hungarian), each fitted
  topic is within 0.1 total variation of the true one.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from scipy.optimize import linear_sum_assignment
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import train_svi
from vizoo.guides import lda as lda_guides
from vizoo.models import lda
from vizoo.models.datasets import corpora
from vizoo.models.errors import DataError
from vizoo.models.exact import lda as exact

WORDS = [[0, 1, 1], [2, 0, 3, 2]]


def tiny_counts() -> torch.Tensor:
    c = torch.zeros(2, 4, dtype=torch.float64)
    for d, doc in enumerate(WORDS):
        for w in doc:
            c[d, w] += 1
    return c


@pytest.fixture(scope="module")
def corpus():
    truth = lda.true_params(3, 30, 0, alpha=0.5)
    x, _ = lda.simulate(truth, 100, 40, 1)
    return x, truth


def test_entries_and_batches_are_row_major():
    x = torch.tensor([[0, 2, 1], [3, 0, 0], [1, 1, 1]], dtype=torch.float64)
    e = exact.entries(x)
    assert e.doc.tolist() == [0, 0, 1, 2, 2, 2] and e.word.tolist() == [1, 2, 0, 0, 1, 2]
    assert e.count.tolist() == [2, 1, 3, 1, 1, 1] and e.rowptr.tolist() == [0, 2, 3, 6]
    docs = torch.tensor([2, 0])
    pos, local, weight = lda.batch_entries(e, docs, 3)
    sub = exact.entries(x[docs])
    assert e.word[pos].tolist() == sub.word.tolist() and local.tolist() == sub.doc.tolist()
    torch.testing.assert_close(weight, sub.count * 1.5)


def test_closed_form_elbo_equals_tokens_and_cavi():
    alpha = torch.tensor([0.7, 1.3], dtype=torch.float64)
    beta = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]], dtype=torch.float64)
    x = tiny_counts()
    e = exact.entries(x)
    gen = torch.Generator().manual_seed(0)
    gamma = 0.3 + 2 * torch.rand(2, 2, generator=gen, dtype=torch.float64)
    phi = torch.softmax(torch.randn(e.doc.shape[0], 2, generator=gen, dtype=torch.float64), -1)
    # the token-level phi: every token of (d, v) takes its entry's row
    rows = {(int(d), int(v)): phi[i] for i, (d, v) in enumerate(zip(e.doc, e.word))}
    phi_tokens = [torch.stack([rows[(d, w)] for w in doc]) for d, doc in enumerate(WORDS)]
    by_entries = exact.elbo_entries(e, alpha, gamma, phi, torch.log(beta))
    torch.testing.assert_close(by_entries, exact.elbo_fixed_topics_tokens(WORDS, alpha, beta, gamma, phi_tokens),
                               rtol=0, atol=1e-10)
    best = torch.softmax(exact._expected_log_dirichlet(gamma)[e.doc] + torch.log(beta)[:, e.word].T, -1)
    state = exact.CAVIState(gamma, None, torch.log(beta))
    torch.testing.assert_close(exact.elbo_entries(e, alpha, gamma, best, torch.log(beta)), exact.elbo(x, alpha, state),
                               rtol=0, atol=1e-10)


def test_pyro_guide_on_the_tiny_corpus_is_a_bound_and_the_gap_is_kl():
    """Point topics, any state of either guide: its exact ELBO and KL by enumerating z."""
    x = tiny_counts()
    beta = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]], dtype=torch.float64)
    init = lda.LDAParams(torch.tensor([0.7, 1.3], dtype=torch.float64), beta=beta)
    log_pw = exact.log_evidence_fixed_topics(WORDS, init.alpha, beta)
    pyro.set_rng_seed(0)
    for guide in (lda_guides.mean_field(x, init, start="posterior"), lda_guides.amortised(x, init, refine=2)):
        with torch.no_grad():
            for p in guide.parameters():
                p.add_(0.3 * torch.randn_like(p))  # any q, not just the start
        gamma, phi = guide.variational(x)
        e = exact.entries(x)
        rows = {(int(d), int(v)): phi[i] for i, (d, v) in enumerate(zip(e.doc, e.word))}
        phi_tokens = [torch.stack([rows[(d, w)] for w in doc]) for d, doc in enumerate(WORDS)]
        bound = lda.closed_form_elbo(x, init, gamma, phi)
        kl = exact.kl_fixed_topics(WORDS, init.alpha, beta, gamma, phi_tokens)
        assert bound <= log_pw and kl > 0
        torch.testing.assert_close(bound + kl, log_pw, rtol=0, atol=1e-10)


@pytest.mark.parametrize("topics", ["bayesian", "point"])
@pytest.mark.parametrize("kind", ["mean_field", "amortised"])
@pytest.mark.parametrize("batch", [None, 20])
def test_pyro_elbo_estimate_is_unbiased(corpus, topics, kind, batch):
    x, _ = corpus
    init = lda.init_params(x, lda.LDAArgs(num_topics=3, topics=topics, alpha=0.5), 0)
    pyro.set_rng_seed(0)
    model = lda.LDA(init)
    guide = getattr(lda_guides, kind)(x, init, start="posterior", **({"refine": 3} if kind == "amortised" else {}))
    guide.eval()  # no natural-step statistics
    truth = float(lda.closed_form_elbo(x, guide.topic_params(model.params).detach(), *guide.variational(x)))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    guide_fn = config_enumerate(guide, "parallel")
    kwargs = {"subsample_size": batch} if batch else {}
    with torch.no_grad():
        draws = np.array([-elbo.loss(model, guide_fn, x, **kwargs) for _ in range(400)])
    se = draws.std(ddof=1) / math.sqrt(draws.size)
    assert abs(draws.mean() - truth) < 4 * se + 1e-9, (draws.mean(), truth, se)


@pytest.mark.parametrize("topics,start", [("bayesian", "posterior"), ("point", "uniform")])
def test_svi_mean_field_reaches_cavi(corpus, topics, start):
    x, _ = corpus
    tokens = float(x.sum())
    init = lda.init_params(x, lda.LDAArgs(num_topics=3, topics=topics, alpha=0.5), 0)
    cavi = lda.fit_cavi(x, init, max_iter=500, tol=1e-10)
    assert np.diff(cavi.elbo).min() >= -1e-10 * abs(cavi.elbo[-1])
    pyro.set_rng_seed(0)
    model, guide = lda.LDA(init), lda_guides.mean_field(x, init, start=start, topic_step="gradient")
    train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=0.1, lr_final=0.001, steps=1200), seed=1, progress=False)
    svi = float(lda.closed_form_elbo(x, guide.topic_params(model.params).detach(), *guide.variational(x)))
    per_token = svi / tokens - cavi.elbo[-1] * x.shape[0] / tokens
    assert per_token > -0.01, per_token


def test_topics_are_recovered():
    truth = lda.true_params(5, 100, 3, alpha=0.5)
    x, _ = lda.simulate(truth, 1000, 80, 4)
    init = lda.init_params(x, lda.LDAArgs(num_topics=5, alpha=0.5), 0)
    fit = lda.fit_cavi(x, init, max_iter=300, tol=1e-7)
    est, true = fit.params.topics(), truth.topics()
    tv = 0.5 * (est[:, None, :] - true[None, :, :]).abs().sum(-1)  # (fitted, true)
    rows, cols = linear_sum_assignment(tv.numpy())
    assert tv[rows, cols].max() < 0.1, tv[rows, cols]


def test_point_topic_variational_em_never_decreases():
    truth = lda.true_params(4, 40, 5, alpha=0.3)
    x, _ = lda.simulate(truth, 200, 30, 6)
    init = lda.init_params(x, lda.LDAArgs(num_topics=4, topics="point", alpha=0.3), 1)
    fit = lda.fit_cavi(x, init, max_iter=80, tol=1e-12)
    assert np.diff(fit.elbo).min() >= -1e-10 * abs(fit.elbo[-1]) and fit.elbo[-1] > fit.elbo[0] + 1


def test_document_completion_and_npmi():
    truth = lda.true_params(4, 60, 0, alpha=0.3)
    x, _ = lda.simulate(truth, 200, 40, 1)
    observed, held = (half.dense() for half in lda.split_halves(x, seed=0))
    torch.testing.assert_close(observed + held, x)
    assert (held.sum(1) >= 1).all() and (observed.sum(1) == torch.div(x.sum(1), 2, rounding_mode="floor")).all()
    unigram = (x.sum(0) / x.sum())[None, :]
    at_truth = lda.document_completion(x, truth.topics(), truth.alpha)["perplexity"]
    flat = lda.document_completion(x, unigram.expand(4, -1), truth.alpha)["perplexity"]
    assert at_truth < flat  # topics explain held-out words better than word frequencies
    # NPMI: words that always occur together score 1, words that never do score -1
    docs = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(lda.npmi(docs, torch.tensor([[0.5, 0.4, 0.05, 0.05]]), 2), torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(lda.npmi(docs, torch.tensor([[0.05, 0.05, 0.5, 0.4]]), 2), torch.tensor([-1.0], dtype=torch.float64))


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="document 1 is empty"):
        lda.validate_data(np.array([[1, 2], [0, 0]]))
    with pytest.raises(DataError, match="integers; row 0, column 1 is 0.5"):
        lda.validate_data(np.array([[1, 0.5], [1, 1]]))
    with pytest.raises(DataError, match="non-negative"):
        lda.validate_data(np.array([[1, -1], [1, 1]]))
    with pytest.raises(DataError, match="5:1"):  # a word id outside the vocabulary, in LDA-C format
        corpora.ldac_counts(["2 0:1 5:1"], vocab_size=4)
    with pytest.raises(ValueError, match="num_topics"):
        lda.LDAArgs(num_topics=0)
    with pytest.raises(ValueError, match="eta applies to topics = 'bayesian' only"):
        lda.LDAArgs(topics="point", eta=0.1)


def test_cli_run_on_synthetic_documents(tmp_path):
    """vizoo run with minibatches and a held-out split: CAVI row, closed-form ELBOs, held-out table."""
    import json

    from vizoo.experiments.cli import main

    cfg = tmp_path / "lda.toml"
    cfg.write_text(
        'model = "lda"\n[data]\nname = "synthetic"\nnum_points = 60\ndim = 20\ndoc_length = 20\nheldout = 0.2\n'
        "[model_args]\nnum_topics = 3\n[guide_args]\nrefine = 2\n"
        '[svi]\nelbo = "TraceEnum_ELBO"\nbatch_size = 16\nsteps = 20\n[em]\nmax_iter = 20\n'
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["num_points"] == 48 and metrics["num_heldout"] == 12
    assert metrics["exact"]["method"] == "CAVI" and np.diff(metrics["exact"]["elbo_trace"]).min() >= -1e-9
    for g in ("mean_field", "amortised"):
        assert metrics["guides"][g]["final_elbo_method"].startswith("closed form")
        assert metrics["heldout"][f"SVI {g}"]["perplexity"] > 1
    report = (run / "report.md").read_text()
    assert "ELBO − CAVI" in report and "top words of each topic" in report and "Held out (12" in report
    assert (run / "params" / "amortised.pt").exists() and (run / "elbo.png").exists()


@pytest.mark.parametrize("batch", [None, 25])
def test_natural_step_is_hoffmans_update(corpus, batch):
    """After one SVI step, lambda = (1 - rho_0) lambda_0 + rho_0 (eta + (D / B) sum_{d in batch} n_dv phi_dvk)
    with the phi the guide used in that step (mean-field guide: its phi before the optimiser moved it)."""
    x, _ = corpus
    init = lda.init_params(x, lda.LDAArgs(num_topics=3, alpha=0.5), 0)
    pyro.set_rng_seed(0)
    model, guide = lda.LDA(init), lda_guides.mean_field(x, init, start="posterior")
    phi_before = torch.softmax(guide.phi_logits.detach().clone(), -1)
    cfg = SVIConfig(elbo="TraceEnum_ELBO", steps=1, batch_size=batch or 0)
    if batch:  # the documents the step will draw: the guide runs first, from the same seed
        guide.eval()  # (no statistics recorded for this look-ahead)
        pyro.set_rng_seed(1)
        docs = pyro.poutine.trace(guide).get_trace(x, batch).nodes["docs"]["value"]
        guide.train()
    train_svi(model, guide, x, cfg, seed=1, progress=False)
    e = exact.entries(x)
    if batch:
        pos = e.positions(docs)
        scale = x.shape[0] / batch
    else:
        pos, scale = torch.arange(e.doc.shape[0]), 1.0
    stats = torch.zeros(3, x.shape[1], dtype=x.dtype).index_add_(1, e.word[pos], (scale * e.count[pos, None] * phi_before[pos]).T)
    rho = lda_guides.LEARNING_OFFSET ** -lda_guides.LEARNING_DECAY
    torch.testing.assert_close(guide.lam, (1 - rho) * init.lam + rho * (init.eta + stats), rtol=1e-12, atol=1e-12)
    assert int(guide.topic_steps) == 1


# --- sparse counts end to end, converged local steps, live topics (issue 22) ---------------------------


def test_sparse_and_dense_paths_agree(corpus):
    x, _ = corpus
    init = lda.init_params(x, lda.LDAArgs(num_topics=3), 0)
    dense = lda.fit_cavi(x, init, max_iter=20, tol=0.0)
    sparse = lda.fit_cavi(x.to_sparse_csr(), init, max_iter=20, tol=0.0)
    torch.testing.assert_close(sparse.params.lam, dense.params.lam, rtol=1e-12, atol=1e-12)
    m_dense = lda.heldout_metrics(x[:80], x[80:], dense.params, 0)
    m_sparse = lda.heldout_metrics(x[:80].to_sparse_csr(), x[80:].to_sparse(), dense.params, 0)
    for key in ("perplexity", "npmi", "heldout_tokens"):
        assert m_sparse[key] == pytest.approx(m_dense[key], rel=1e-12)
    # the guides: the same minibatch entries, network inputs and q from dense and sparse counts
    for build, kw in ((lda_guides.amortised, {"refine": 3}), (lda_guides.amortised, {"local": "cavi"}),
                      (lda_guides.mean_field, {"start": "posterior"})):
        qs = [build(c, init, **kw) for c in (x, x.to_sparse_csr())]
        qs[1].load_state_dict(qs[0].state_dict())
        for a, b in zip(qs[0].variational(x), qs[1].variational(x.to_sparse_csr())):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["cavi", "amortised", "mean_field"])
def test_every_true_topic_stays_alive(kind):
    """A synthetic corpus whose truth has K live topics: each fitted topic carries >= 1/(4K) of the tokens
    and no two fitted topics are near-duplicates (cosine < 0.9)."""
    k = 5
    truth = lda.true_params(k, 100, 3, alpha=0.3)
    x, _ = lda.simulate(truth, 400, 60, 4)
    x = x.to_sparse_csr()
    init = lda.init_params(x, lda.LDAArgs(num_topics=k), 0)
    if kind == "cavi":
        fitted = lda.fit_cavi(x, init, max_iter=40, tol=1e-7).params
    else:
        pyro.set_rng_seed(0)
        model = lda.LDA(init)
        guide = (lda_guides.amortised if kind == "amortised" else lda_guides.mean_field)(x, init, local="cavi")
        train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=1e-3, steps=60, batch_size=100), seed=1, progress=False)
        fitted = guide.topic_params(model.params).detach()
    use = lda.topic_usage(x, fitted)
    assert use["min_share"] > 1 / (4 * k) and use["max_cosine"] < 0.9, use


def test_finishing_sweeps_are_cavi_from_the_svi_topics(corpus):
    """finish_sweeps (the semi-amortised hybrid): the first call of topic_params runs the sweeps once, from
    the SVI lambda, the first finish_restarts sweeps starting every document from the network's gamma,
    the rest warm; the result is exactly those doc_step sweeps. The options reach the builder from the
    config's guide_args."""
    from vizoo.experiments.config import GuideArgs

    x, _ = corpus
    x = x.to_sparse_csr()
    init = lda.init_params(x, lda.LDAArgs(num_topics=3, alpha=0.5), 0)
    args = GuideArgs(hidden=(8,), local="cavi", learning_offset=1.0, learning_decay=0.9, finish_sweeps=3, finish_restarts=2)
    kw = args.for_builder(lda_guides.amortised)
    assert kw["local"] == "cavi" and kw["finish_sweeps"] == 3 and kw["finish_restarts"] == 2
    pyro.set_rng_seed(0)
    model, guide = lda.LDA(init), lda_guides.amortised(x, init, **kw)
    train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=1e-3, steps=3, batch_size=50), seed=1, progress=False)
    assert not bool(guide.finished)
    e = exact.entries(x)
    lam = guide.lam.clone()
    with torch.no_grad():
        start = init.alpha + e.lengths[:, None] * guide.proportions(e, torch.arange(e.num_docs))
    gamma = None
    for sweep in range(3):
        step = exact.doc_step(e, init.alpha, exact._expected_log_dirichlet(lam), start if sweep < 2 else gamma)
        gamma, lam = step.gamma, init.eta + step.topic_stats
    fitted = guide.topic_params(model.params).lam
    torch.testing.assert_close(fitted, lam, rtol=1e-12, atol=1e-12)
    assert bool(guide.finished)
    torch.testing.assert_close(guide.topic_params(model.params).lam, lam, rtol=0, atol=0)  # once only
    assert lda_guides.mean_field(x, init, **GuideArgs().for_builder(lda_guides.mean_field)).local == "gradient"
