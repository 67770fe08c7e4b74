"""Closed-form CAVI for LDA (models.exact.lda), checked against exact enumeration on a tiny corpus.

(Part of the LDA issue: the plain-torch reference comes first; the Pyro model and guides build on it.)
* CAVI's ELBO never decreases (each update maximises it in its block); slack 1e-10 relative, round-off.
* Tiny corpus (2 documents, 3 and 4 tokens, 2 topics, fixed topics): with theta integrated out, the
  K^N topic assignments can be enumerated, so log p(w) is exact. For any q: ELBO <= log p(w), and
  ELBO + KL(q || p(theta, z | w)) = log p(w) to 1e-10, with the KL enumerated and the ELBO token by
  token (independent codes). The count-based ELBO at the optimal phi equals the token-based one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vizoo.models.exact import lda

WORDS = [[0, 1, 1], [2, 0, 3, 2]]
V = 4


def counts_of(words) -> torch.Tensor:
    c = torch.zeros(len(words), V, dtype=torch.float64)
    for d, doc in enumerate(words):
        for w in doc:
            c[d, w] += 1
    return c


@pytest.fixture
def topics():
    beta = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]], dtype=torch.float64)
    return torch.tensor([0.7, 1.3], dtype=torch.float64), beta


def optimal_phi(words, gamma, beta):
    e = lda._expected_log_dirichlet(gamma)
    return [torch.softmax(e[d][None, :] + torch.log(beta[:, doc]).T, -1) for d, doc in enumerate(words)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_on_a_tiny_corpus_for_any_q(topics, seed):
    alpha, beta = topics
    gen = torch.Generator().manual_seed(seed)
    gamma = 0.2 + 3 * torch.rand(2, 2, generator=gen, dtype=torch.float64)
    phi = [torch.softmax(2 * torch.randn(len(doc), 2, generator=gen, dtype=torch.float64), -1) for doc in WORDS]
    log_pw = lda.log_evidence_fixed_topics(WORDS, alpha, beta)
    bound = lda.elbo_fixed_topics_tokens(WORDS, alpha, beta, gamma, phi)
    kl = lda.kl_fixed_topics(WORDS, alpha, beta, gamma, phi)
    assert bound <= log_pw and kl > 0
    torch.testing.assert_close(bound + kl, log_pw, rtol=0, atol=1e-10)


def test_cavi_on_the_tiny_corpus_is_a_bound_and_matches_tokens(topics):
    alpha, beta = topics
    counts = counts_of(WORDS)
    fit = lda.fit_cavi(counts, alpha, 2, beta=beta, max_sweeps=50)
    assert np.diff(fit.elbo).min() >= -1e-10 * abs(fit.elbo[-1])
    gamma = fit.state.gamma
    log_pw = lda.log_evidence_fixed_topics(WORDS, alpha, beta)
    by_tokens = lda.elbo_fixed_topics_tokens(WORDS, alpha, beta, gamma, optimal_phi(WORDS, gamma, beta))
    torch.testing.assert_close(torch.tensor(fit.elbo[-1], dtype=torch.float64), by_tokens, rtol=0, atol=1e-10)
    kl = lda.kl_fixed_topics(WORDS, alpha, beta, gamma, optimal_phi(WORDS, gamma, beta))
    assert kl > 0 and fit.elbo[-1] <= float(log_pw)  # mean field: close to, not at, the posterior
    # and it is the family's best: no other gamma (with its optimal phi) is closer to the posterior
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        other = 0.1 + 5 * torch.rand(2, 2, generator=gen, dtype=torch.float64)
        assert lda.kl_fixed_topics(WORDS, alpha, beta, other, optimal_phi(WORDS, other, beta)) >= kl - 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_bayesian_cavi_never_decreases_its_elbo(seed):
    gen = torch.Generator().manual_seed(seed)
    k, v, d = 3, 30, 40
    topics = torch.distributions.Dirichlet(torch.full((v,), 0.1, dtype=torch.float64)).sample((k,))
    theta = torch.distributions.Dirichlet(torch.full((k,), 0.5, dtype=torch.float64)).sample((d,))
    counts = torch.stack([torch.bincount(torch.multinomial(theta[i] @ topics, 50, replacement=True, generator=gen),
                                         minlength=v) for i in range(d)]).to(torch.float64)
    fit = lda.fit_cavi(counts, torch.full((k,), 0.5, dtype=torch.float64), k, eta=0.1, max_sweeps=60, seed=seed)
    trace = np.asarray(fit.elbo)
    assert np.diff(trace).min() >= -1e-10 * abs(trace).max()
    assert trace[-1] > trace[0] + 1.0


# --- the sparse, per-document-converged E-step (issue 22) ---------------------------------------------


def _corpus(seed: int, k: int = 4, v: int = 40, d: int = 60, length: int = 50):
    gen = torch.Generator().manual_seed(seed)
    topics = torch.distributions.Dirichlet(torch.full((v,), 0.1, dtype=torch.float64)).sample((k,))
    theta = torch.distributions.Dirichlet(torch.full((k,), 0.3, dtype=torch.float64)).sample((d,))
    return torch.stack([torch.bincount(torch.multinomial(theta[i] @ topics, length, replacement=True, generator=gen),
                                       minlength=v) for i in range(d)]).to(torch.float64), topics


@pytest.mark.parametrize("seed", [0, 1])
def test_each_document_update_never_lowers_that_documents_elbo(seed):
    counts, topics = _corpus(seed)
    alpha = torch.full((4,), 0.3, dtype=torch.float64)
    log_beta = torch.log(topics)
    gamma = torch.ones(counts.shape[0], 4, dtype=torch.float64)
    per_doc = []
    for _ in range(30):  # one document update at a time, every document; each document's own ELBO
        per_doc.append(torch.stack([lda.elbo(counts[d:d + 1], alpha, lda.CAVIState(gamma[d:d + 1], None, log_beta))
                                    for d in range(counts.shape[0])]))
        gamma = lda.doc_step(lda.entries(counts), alpha, log_beta, gamma, tol=0.0, max_iters=1).gamma
    per_doc = torch.stack(per_doc)  # (updates, D)
    assert (per_doc.diff(dim=0) >= -1e-10 * per_doc.abs()[1:]).all()
    # and run to the tolerance, every document stops moving: one more update changes gamma_d by < tol
    done = lda.doc_step(lda.entries(counts), alpha, log_beta, torch.ones_like(gamma), tol=1e-6, max_iters=1000)
    again = lda.doc_step(lda.entries(counts), alpha, log_beta, done.gamma, tol=0.0, max_iters=1).gamma
    assert (again - done.gamma).abs().mean(-1).max() < 1e-6 and done.iters.max() < 1000


def test_sparse_and_dense_counts_give_the_same_fit():
    counts, _ = _corpus(2)
    alpha = torch.full((4,), 0.3, dtype=torch.float64)
    fits = [lda.fit_cavi(c, alpha, 4, eta=0.1, max_sweeps=15, restart_sweeps=3, seed=0)
            for c in (counts, counts.to_sparse_csr(), counts.to_sparse(), lda.entries(counts))]
    for other in fits[1:]:
        torch.testing.assert_close(other.state.lam, fits[0].state.lam, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.tensor(other.elbo), torch.tensor(fits[0].elbo), rtol=1e-12, atol=0)
    # after the restarted sweeps the ELBO never decreases
    assert np.diff(fits[0].elbo[3:]).min() >= -1e-10 * abs(fits[0].elbo[-1])
    e = lda.entries(counts)
    torch.testing.assert_close(e.dense(), counts)
    torch.testing.assert_close(e.rows(torch.tensor([5, 2, 9])).dense(), counts[[5, 2, 9]])


# --- the blocked document step: the same updates as one document at a time ----------------------------


def reference_doc_step(counts, alpha, log_beta, gamma, tol, max_iters):
    """CAVI's document updates written plainly, one document at a time on its dense columns (as
    scikit-learn's loop): gamma (D, K) and the updates each document took (D,)."""
    b = torch.exp(log_beta)
    out, iters = gamma.clone(), torch.zeros(gamma.shape[0], dtype=torch.long)
    for d in range(counts.shape[0]):
        words = counts[d].nonzero()[:, 0]
        n, b_d, g = counts[d, words], b[:, words], gamma[d]
        for _ in range(max_iters):
            a = torch.exp(torch.digamma(g) - torch.digamma(g.sum()))
            new = alpha + a * ((n / (a @ b_d)) @ b_d.T)
            iters[d] += 1
            change, g = (new - g).abs().mean(), new
            if change < tol:
                break
        out[d] = g
    return out, iters


_REFERENCE: dict = {}


def _ragged_corpus(seed: int, k: int = 5, v: int = 80, d: int = 70):
    """Documents of very different lengths (1 to ~300 tokens) and one empty row, as a minibatch may have."""
    gen = torch.Generator().manual_seed(seed)  # every draw from it: the same corpus in every test
    topics = torch.softmax(3 * torch.randn(k, v, generator=gen, dtype=torch.float64), -1)
    theta = torch.softmax(2 * torch.randn(d, k, generator=gen, dtype=torch.float64), -1)
    lengths = torch.randint(1, 300, (d,), generator=gen)
    lengths[::9] = 1
    counts = torch.stack([torch.bincount(torch.multinomial(theta[i] @ topics, int(lengths[i]), replacement=True, generator=gen),
                                         minlength=v) for i in range(d)]).to(torch.float64)
    counts[d // 2] = 0.0
    return counts, topics, gen


@pytest.mark.parametrize("block_entries", [16, 300, lda.BLOCK_ENTRIES])
@pytest.mark.parametrize("tol,max_iters", [(1e-3, 100), (1e-6, 1000), (0.0, 7)])
def test_blocked_document_step_equals_one_document_at_a_time(block_entries, tol, max_iters):
    """doc_step (documents in length-sorted blocks, stopped documents dropped, stragglers re-blocked) gives
    every document the same updates as the plain loop: the same number of updates, gamma equal to 1e-10
    relative (the same sums in another order, with rescaled exponentials), from a random start; and its
    topic statistics and log Z equal sum_d n_dv phi_dvk and log sum_k a_dk b_kv computed densely. Small
    blocks force many blocks, drops and hand-backs; the default puts the corpus in one block."""
    counts, topics, gen = _ragged_corpus(0)
    k = topics.shape[0]
    alpha = torch.full((k,), 0.2, dtype=torch.float64)
    log_beta = torch.log_softmax(2 * torch.randn(k, counts.shape[1], generator=gen, dtype=torch.float64), -1)
    gamma0 = 0.05 + 3 * torch.rand(counts.shape[0], k, generator=gen, dtype=torch.float64)
    step = lda.doc_step(lda.entries(counts), alpha, log_beta, gamma0, tol, max_iters, block_entries=block_entries)
    if (tol, max_iters) not in _REFERENCE:  # the plain loop is slow: once per setting, not per block size
        _REFERENCE[tol, max_iters] = reference_doc_step(counts, alpha, log_beta, gamma0, tol, max_iters)
    want, iters = _REFERENCE[tol, max_iters]
    assert torch.equal(step.iters, iters)
    torch.testing.assert_close(step.gamma, want, rtol=1e-10, atol=0)
    a = torch.exp(torch.digamma(want) - torch.digamma(want.sum(-1, keepdim=True)))
    z = a @ torch.exp(log_beta)                                                     # (D, V)
    stats = torch.einsum("dk,kv,dv->kv", a, torch.exp(log_beta), torch.where(counts > 0, counts / z, 0.0))
    torch.testing.assert_close(step.topic_stats, stats, rtol=1e-10, atol=1e-12)
    e = lda.entries(counts)
    torch.testing.assert_close(step.log_z, torch.log(z[e.doc, e.word]), rtol=1e-10, atol=1e-12)


def test_doc_step_drops_and_hand_backs_do_not_change_gamma(monkeypatch):
    """Dropping stopped documents from a block's working set and re-blocking a block's stragglers only move
    work around: with neither (every block runs all its documents to the end) gamma is the same to 1e-12."""
    counts, topics, gen = _ragged_corpus(1)
    alpha = torch.full((5,), 0.2, dtype=torch.float64)
    e = lda.entries(counts)
    gamma0 = torch.ones(counts.shape[0], 5, dtype=torch.float64)
    blocked = lda.doc_step(e, alpha, torch.log(topics), gamma0, block_entries=1000)
    monkeypatch.setattr(lda, "DROP_FRACTION", 2.0)
    monkeypatch.setattr(lda, "HAND_BACK", 0.0)
    plain = lda.doc_step(e, alpha, torch.log(topics), gamma0, block_entries=1000)
    assert torch.equal(blocked.iters, plain.iters)
    torch.testing.assert_close(blocked.gamma, plain.gamma, rtol=1e-12, atol=0)


# --- restarted sweeps: scikit-learn's batch method, draw for draw ------------------------------------------


def test_restarted_sweeps_are_scikit_learns_batch_method():
    """Given scikit-learn's random draws (its initial lambda, then each E-step's Gamma(100, 1/100) start of
    every document), restarted doc_step sweeps with lambda = eta + statistics are its batch method: the
    same topics after 8 iterations (each sweep's documents iterated to the same tolerance). Not to 1e-12:
    scikit-learn's digamma is its own series (2.3e-9 from scipy's and torch's near 1), and 8 sweeps of
    updates carry that to 2.5e-8 relative; starting every E-step from gamma = 1 instead misses by far more."""
    from sklearn.decomposition import LatentDirichletAllocation

    counts, _ = _corpus(3)
    k, prior = 4, 0.25
    sk = LatentDirichletAllocation(k, doc_topic_prior=prior, topic_word_prior=prior, learning_method="batch",
                                   max_iter=8, random_state=0).fit(counts.numpy())
    draws = np.random.RandomState(0)  # the same stream, in scikit-learn's order
    lam = torch.as_tensor(draws.gamma(100.0, 1.0 / 100.0, (k, counts.shape[1])))
    e, alpha = lda.entries(counts), torch.full((k,), prior, dtype=torch.float64)
    flat = lam.clone()
    for _ in range(8):
        start = torch.as_tensor(draws.gamma(100.0, 0.01, (e.num_docs, k)))
        lam = prior + lda.doc_step(e, alpha, lda._expected_log_dirichlet(lam), start).topic_stats
        flat = prior + lda.doc_step(e, alpha, lda._expected_log_dirichlet(flat), torch.ones_like(start)).topic_stats
    target = torch.as_tensor(sk.components_)
    torch.testing.assert_close(lam, target, rtol=1e-6, atol=0)
    assert ((flat - target).abs() / target).max() > 1e-4


def test_jittered_restart_leaves_the_symmetric_fixed_point():
    """Two topics that weigh a document's words alike: from gamma = 1 exactly every update keeps the two
    topics equal (the symmetric fixed point); from restart_gamma's draws the document leaves it for one
    topic, at a higher ELBO (alpha < 1 makes the symmetric point a saddle)."""
    counts = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    log_beta = torch.log(torch.tensor([[0.3, 0.3, 0.4], [0.3, 0.3, 0.4]], dtype=torch.float64))
    alpha = torch.full((2,), 0.1, dtype=torch.float64)
    e = lda.entries(counts)
    flat = lda.doc_step(e, alpha, log_beta, torch.ones(1, 2, dtype=torch.float64), tol=1e-10, max_iters=500)
    torch.testing.assert_close(flat.gamma, torch.full((1, 2), 0.1 + 3.5, dtype=torch.float64), rtol=0, atol=1e-12)
    start = lda.restart_gamma(1, 2, counts, torch.Generator().manual_seed(0))
    assert (start - 1).abs().max() < 0.5 and (start[0, 0] != start[0, 1])
    moved = lda.doc_step(e, alpha, log_beta, start, tol=1e-10, max_iters=5000)
    assert moved.gamma.max() > 0.1 + 7 - 1e-3  # every word to one topic
    value = [float(lda.elbo(counts, alpha, lda.CAVIState(g.gamma, None, log_beta))) for g in (flat, moved)]
    assert value[1] > value[0] + 0.1


def grouped_corpus(groups: int, per_group: int, words_per_group: int = 5, empty: int = 0) -> torch.Tensor:
    """``groups`` blocks of identical documents on disjoint words (block g: words g*w .. g*w + w - 1,
    counts 1..w), then ``empty`` documents with no tokens."""
    c = torch.zeros(groups * per_group + empty, groups * words_per_group, dtype=torch.float64)
    for g in range(groups):
        c[g * per_group:(g + 1) * per_group, g * words_per_group:(g + 1) * words_per_group] = torch.arange(1.0, words_per_group + 1)
    return c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_document_seeds_are_d2_sampled_one_from_each_group(seed):
    """Greedy k-means++ seeding on cosine distance (and plain D^2 sampling, trials = 1): documents
    identical to a chosen one are at distance 0, so they are never drawn while another group is left; K
    groups give one seed each, and no empty document is ever drawn (the first draw is among non-empty
    documents only)."""
    c = grouped_corpus(groups=4, per_group=6, empty=5)
    e = lda.entries(c)
    freq = e.count / e.lengths[e.doc]
    for trials in (1, None):
        chosen = lda.seed_documents(e, freq, 4, torch.Generator().manual_seed(seed), trials=trials)
        assert chosen.shape == (4,) and bool((chosen < 24).all())
        assert sorted(int(d) // 6 for d in chosen) == [0, 1, 2, 3]
        # more seeds than distinct documents: the rest are drawn among the non-empty ones, never empty ones
        more = lda.seed_documents(e, freq, 7, torch.Generator().manual_seed(seed), trials=trials)
        assert len({int(d) // 6 for d in more[:4]}) == 4 and bool((more < 24).all())


def varied_groups(groups: int, per_group: int, width: int, high: int) -> torch.Tensor:
    """Documents in ``groups`` groups over disjoint words (``width`` each), counts Uniform{0..high-1}
    (seeded), so cosine distances within a group are small but not 0; no empty document."""
    gen = torch.Generator().manual_seed(0)
    c = torch.zeros(groups * per_group, groups * width, dtype=torch.float64)
    for g in range(groups):
        c[g * per_group:(g + 1) * per_group, g * width:(g + 1) * width] = torch.randint(0, high, (per_group, width), generator=gen).double()
    c[c.sum(-1) == 0, 0] = 1.0
    return c


def seeds_potential(e, freq, chosen) -> float:
    """k-means++'s potential of the seeds: the sum over documents of the squared cosine distance to the
    nearest seed, computed densely here (independently of seed_documents' sparse updates)."""
    dense = torch.zeros(e.num_docs, e.num_words, dtype=torch.float64)
    dense[e.doc, e.word] = freq
    unit = dense / dense.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    dist = (1 - unit @ unit[chosen].T).clamp_min(0).min(-1).values
    return float((dist[dense.sum(-1) > 0] ** 2).sum())


def test_greedy_document_seeds_lower_the_potential():
    """Greedy k-means++ (scikit-learn's: 2 + floor(ln K) candidates per pick, the one leaving the smallest
    potential kept) against plain D^2 sampling (trials = 1) on a corpus of 3 groups of 20 documents whose
    counts vary within a group, K = 6: over 20 generator seeds the greedy seeds' potential is lower on
    average (0.73 of it here; the potential computed densely, apart from seed_documents' sparse updates)."""
    c = varied_groups(groups=3, per_group=20, width=6, high=4)
    e = lda.entries(c)
    freq = e.count / e.lengths[e.doc]
    plain = [seeds_potential(e, freq, lda.seed_documents(e, freq, 6, torch.Generator().manual_seed(s), trials=1)) for s in range(20)]
    greedy = [seeds_potential(e, freq, lda.seed_documents(e, freq, 6, torch.Generator().manual_seed(s))) for s in range(20)]
    assert sum(greedy) < 0.9 * sum(plain)
    with pytest.raises(ValueError, match="trials must be >= 1"):
        lda.seed_documents(e, freq, 6, torch.Generator().manual_seed(0), trials=0)


def test_document_seeded_lambda_adds_each_seed_documents_words():
    """init="documents": lambda is the random start (the same draws) plus, on topic k, weight N / K
    tokens spread as seed document k's word distribution: the added mass is weight N, and each topic's
    addition lies on one group's words in the proportions 1 : 2 : ... : 5."""
    c = grouped_corpus(groups=3, per_group=4)
    n = float(c.sum())
    plain = lda.initial_lambda(c, 3, 0.1, seed=5)
    seeded = lda.initial_lambda(c, 3, 0.1, seed=5, init="documents", document_weight=0.25)
    extra = seeded - plain
    assert float(extra.min()) >= 0
    torch.testing.assert_close(extra.sum(), torch.tensor(0.25 * n, dtype=torch.float64), rtol=1e-12, atol=0)
    for k in range(3):
        block = extra[k].reshape(3, 5)
        g = int(block.sum(-1).argmax())
        torch.testing.assert_close(block[g], 0.25 * n / 3 * torch.arange(1.0, 6.0, dtype=torch.float64) / 15, rtol=1e-12, atol=0)
        assert float(block.sum()) == pytest.approx(float(block[g].sum()), abs=1e-12)
    assert sorted(int(extra[k].reshape(3, 5).sum(-1).argmax()) for k in range(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="init must be one of"):
        lda.initial_lambda(c, 3, 0.1, seed=5, init="kmeans")
    with pytest.raises(ValueError, match="no tokens"):
        lda.initial_lambda(torch.zeros(3, 4, dtype=torch.float64), 2, 0.1, seed=0, init="documents")


def test_document_seeds_are_the_same_dense_or_sparse():
    c = grouped_corpus(groups=3, per_group=4, empty=2)
    dense = lda.initial_lambda(c, 3, 0.1, seed=3, init="documents")
    sparse = lda.initial_lambda(c.to_sparse_csr(), 3, 0.1, seed=3, init="documents")
    torch.testing.assert_close(dense, sparse, rtol=0, atol=0)
    single = lda.initial_lambda(c.float(), 3, 0.1, seed=3, init="documents")  # the counts' dtype, as the random start
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, dense.float(), rtol=1e-6, atol=0)


def test_cavi_from_document_seeds_separates_disjoint_topics():
    """Documents drawn from K = 4 topics on disjoint words: whenever the greedy seeds cover the 4 groups
    (9 or more of 10 generator seeds: the last pick misses the one uncovered group, holding ~75% of the
    D^2 mass, with probability ~0.25^3 per seed; 197 of 200 seeds cover in the coverage test), 3 CAVI
    sweeps from the document start give each topic its own group's words (over 99% of its mass beyond
    the prior), the 4 topics covering the 4 groups. (From the random start, seeds 2 and 3 merge two
    groups into one topic and leave one topic split, still so after 10 sweeps: a local optimum the seeds
    avoid.)"""
    groups, width = 4, 6
    c = varied_groups(groups, per_group=30, width=width, high=5)
    alpha = torch.full((groups,), 0.25, dtype=torch.float64)
    covered = 0
    for seed in range(10):
        lam = lda.initial_lambda(c, groups, 0.1, seed=seed, init="documents")
        added = (lam - lda.initial_lambda(c, groups, 0.1, seed=seed)).reshape(groups, groups, width).sum(-1)
        if sorted(int(g) for g in added.argmax(-1)) != list(range(groups)):
            continue  # a group without a seed document
        covered += 1
        fit = lda.fit_cavi(c, alpha, groups, eta=0.1, lam=lam, max_sweeps=3, restart_sweeps=0, tol=0)
        mass = (fit.state.lam - 0.1).reshape(groups, groups, width).sum(-1)  # (topic, group)
        share = mass / mass.sum(-1, keepdim=True)
        assert bool((share.max(-1).values > 0.99).all()), seed
        assert sorted(int(g) for g in share.argmax(-1)) == list(range(groups)), seed
    assert covered >= 9


def test_greedy_document_seeds_cover_disjoint_groups_more_often_than_d2_sampling():
    """The same 4 disjoint-word groups, 200 generator seeds: greedy seeding (3 candidates per pick for
    K = 4) puts one seed in each group in 197 (expected ~98%: only the last pick misses, with probability
    ~0.25^3), plain D^2 sampling (trials = 1) in 131 (expected ~65%: the product of the mass on the
    uncovered groups at each pick, ~0.97 x 0.90 x 0.75); the bounds below are 3 binomial standard
    deviations or more from those."""
    c = varied_groups(groups=4, per_group=30, width=6, high=5)
    e = lda.entries(c)
    freq = e.count / e.lengths[e.doc]

    def covers(seed, trials):
        return len({int(d) // 30 for d in lda.seed_documents(e, freq, 4, torch.Generator().manual_seed(seed), trials=trials)}) == 4

    assert sum(covers(s, None) for s in range(200)) >= 190
    assert sum(covers(s, 1) for s in range(200)) <= 150
