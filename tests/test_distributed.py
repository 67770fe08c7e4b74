"""Data-parallel SVI (experiments/distributed.py): two gloo processes on localhost, CPU.

* Deterministic guide (the noisy-OR's amortised guide under TraceEnum_ELBO: no draws at all), every point each
  step: after K steps two processes on shards A and B hold the parameters one process reaches on A u B, with
  unequal shards (31 and 30 points), so the weights b_r / B are exercised. The two differ only by the order of
  float64 sums: 1e-6 is orders of magnitude above that and below any real difference.
* Stochastic guide (LDA's amortised guide: theta and beta drawn, the natural step's statistics combined;
  minibatches): one process replays each rank's step at that rank's seed and indices and combines them with
  the same weights; the two-process run must match it to 1e-6.
* Checkpoint and resume under two processes: a run stopped by an agreed Ctrl-C after step 3 (one process is
  "interrupted", and both stop at the same step), resumed from rank 0's checkpoint, ends bit for bit where the
  uninterrupted run ends.
* A process that dies makes the other fail with one line (ParallelError), not hang.
* A model/guide that cannot train data-parallel is refused with one line before any process starts.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.infer import config_enumerate
from vizoo.experiments import distributed
from vizoo.experiments.checkpoint import Checkpointer
from vizoo.experiments.cli import main
from vizoo.experiments.config import bundled_configs, load_config
from vizoo.experiments.run import load_data, prepare
from vizoo.experiments.train import interruptible, loss_and_grads, make_elbo, train_svi
from vizoo.models.errors import ConfigError

TIMEOUT = 20.0

NOISY_OR = ("noisy_or_synthetic", ['guides=["amortised"]', "data.num_points=61", "model_args.num_causes=3",
                                   "data.dim=8", "svi.steps=6", "svi.lr=0.05", "guide_args.hidden=[8]"])
LDA = ("lda_synthetic", ['guides=["amortised"]', "data.num_points=40", "data.dim=30", "data.heldout=0",
                         "model_args.num_topics=3", "guide_args.hidden=[8]", "guide_args.refine=2", "svi.steps=5",
                         "svi.batch_size=10", "model_args.topics='bayesian'"])
NOISY_OR_SAMPLED = (NOISY_OR[0], NOISY_OR[1] + ["svi.elbo='Trace_ELBO'"])  # draws every step: the seeds must line up


def _setup(case):
    """(cfg, model, guide, x) built as a run builds them (same seed: the same numbers in every process)."""
    name, overrides = case
    cfg = load_config(bundled_configs()[name], overrides)
    prep = prepare(cfg, cfg.spec, load_data(cfg, cfg.spec))
    g = cfg.guides[0]
    model = (cfg.spec.guides[g].learnable or cfg.spec.learnable)(prep.init, cfg.model_args)
    return cfg, model, prep.guides[g], prep.x


def _state(model, guide) -> dict:
    return {**{f"model.{k}": v.clone() for k, v in model.state_dict().items()},
            **{f"guide.{k}": v.clone() for k, v in guide.state_dict().items()}}


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k


def _join(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT))


def _spawn(fn, out: Path) -> list[int]:
    """Run ``fn(rank, port, out)`` in two processes; their exit codes (each waited for, none stopped early)."""
    context = mp.spawn(fn, args=(distributed.free_port(), str(out)), nprocs=2, join=False)
    for p in context.processes:
        p.join()
    return [p.exitcode for p in context.processes]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    assert _spawn(_session, out) == [0, 0]
    return out


# --------------------------------------------------------------------------- processes (module level: spawn pickles them)


def _train(rank: int, out: Path, case, name: str, steps_stop: int | None = None, resume: bool = False) -> None:
    """Train ``case`` as rank ``rank`` of 2; rank 0 saves the final parameters as ``name``. ``steps_stop``: rank 1
    says it was interrupted during that step (the processes agree to stop after it), rank 0 checkpoints;
    ``resume``: start from that checkpoint."""
    cfg, model, guide, x = _setup(case)
    shards = distributed.Shards(x.shape[0], 2, cfg.svi.batch_size, seed=1, device=x.device)
    parallel = distributed.DataParallel(model, guide, shards, rank, TIMEOUT)
    if steps_stop is not None and rank == 1:
        step_kwargs = parallel.step_kwargs

        def interrupted_at(step):
            distributed._INTERRUPTED = step == steps_stop  # as Ctrl-C on this process alone would
            return step_kwargs(step)

        parallel.step_kwargs = interrupted_at
    path = out / "checkpoint.pt"
    checkpoint = Checkpointer(path, {"run": "test"}) if rank == 0 else None
    state = Checkpointer(path, {"run": "test"}).load(cfg.svi.steps) if resume else None
    try:
        with interruptible():  # as a run: the agreed stop is cleared when training ends
            result = train_svi(model, guide, x, cfg.svi, seed=1, progress=False, checkpoint=checkpoint, resume=state,
                               parallel=parallel)
    finally:
        distributed._INTERRUPTED = False
    if rank == 0:
        torch.save({"state": _state(model, guide), "steps": result.steps, "trace": result.elbo_trace}, out / name)


def _session(rank: int, port: int, out: str) -> None:
    """Every two-process run the tests read, in one process group (starting processes is the slow part)."""
    _join(rank, 2, port)
    out = Path(out)
    try:
        _train(rank, out, NOISY_OR, "noisy_or.pt")
        _train(rank, out, LDA, "lda.pt")
        _train(rank, out, NOISY_OR_SAMPLED, "final.pt")
        _train(rank, out, NOISY_OR_SAMPLED, "stopped.pt", steps_stop=2)  # rank 1 "interrupted" in step 2
        _train(rank, out, NOISY_OR_SAMPLED, "resumed.pt", resume=True)
    finally:
        dist.destroy_process_group()


def _die(rank: int, port: int, out: str) -> None:
    """Rank 1 dies at step 2 (no goodbye); rank 0 records what it raised."""
    _join(rank, 2, port)
    cfg, model, guide, x = _setup(NOISY_OR)
    parallel = distributed.DataParallel(model, guide, distributed.Shards(x.shape[0], 2, 0, 1), rank, TIMEOUT)
    if rank == 1:
        step_kwargs = parallel.step_kwargs
        parallel.step_kwargs = lambda step: os._exit(3) if step == 2 else step_kwargs(step)
    try:
        train_svi(model, guide, x, cfg.svi, seed=1, progress=False, parallel=parallel)
        message = "no error"
    except distributed.ParallelError as err:
        message = str(err)
    Path(out, "rank0.txt").write_text(message)


class _Replay:
    """One process, the distributed step: rank 0's term is train_svi's own, rank 1's is evaluated here at its
    seed and indices; gradients, statistics and estimate are combined with the weights b_r / B."""

    def __init__(self, model, guide, x, cfg, shards):
        self.model, self.guide, self.x, self.shards = model, guide, x, shards
        self.elbo = make_elbo(cfg.svi)
        self.guide_fn = config_enumerate(guide, "parallel") if cfg.svi.elbo == "TraceEnum_ELBO" else guide
        self.params = [p for p in (*model.parameters(), *guide.parameters()) if p.requires_grad]
        self.step = 0

    def broadcast(self) -> None:
        pass

    def step_kwargs(self, step: int) -> dict:
        self.step = step
        return self.shards.step_kwargs(0, step)

    def reduce(self, loss0: float) -> float:
        w0, w1 = self.shards.weight(0), self.shards.weight(1)
        grads0 = [None if p.grad is None else p.grad.clone() for p in self.params]
        stats = self.guide.step_statistics()
        stats0 = [s.clone() for s in stats]
        for p in self.params:
            p.grad = None
        loss1 = loss_and_grads(self.elbo, self.model, self.guide_fn, self.x, **self.shards.step_kwargs(1, self.step))
        for p, g0 in zip(self.params, grads0):
            if g0 is not None or p.grad is not None:
                p.grad = w0 * (0 if g0 is None else g0) + w1 * (0 if p.grad is None else p.grad)
        stats1 = stats[len(stats0):]
        stats[:] = [w0 * a + w1 * b for a, b in zip(stats0, stats1)]
        return w0 * loss0 + w1 * loss1


# --------------------------------------------------------------------------- tests


def test_two_processes_on_shards_equal_one_process_on_their_union(runs):
    torch.set_num_threads(1)
    cfg, model, guide, x = _setup(NOISY_OR)
    train_svi(model, guide, x, cfg.svi, seed=1, progress=False)  # one process, every point: A u B
    two = torch.load(runs / "noisy_or.pt", weights_only=True)
    assert two["steps"] == cfg.svi.steps
    _assert_close(two["state"], _state(model, guide), atol=1e-6)
    # and it moved: the check is not of two copies of the initialisation
    _, fresh_model, fresh_guide, _ = _setup(NOISY_OR)
    assert max(float((v - two["state"][k]).abs().max()) for k, v in _state(fresh_model, fresh_guide).items()
               if v.is_floating_point()) > 1e-3


def test_stochastic_guide_equals_one_process_replaying_each_rank(runs):
    torch.set_num_threads(1)
    cfg, model, guide, x = _setup(LDA)
    shards = distributed.Shards(x.shape[0], 2, cfg.svi.batch_size, seed=1, device=x.device)
    result = train_svi(model, guide, x, cfg.svi, seed=1, progress=False, parallel=_Replay(model, guide, x, cfg, shards))
    two = torch.load(runs / "lda.pt", weights_only=True)
    _assert_close(two["state"], _state(model, guide), atol=1e-6)
    torch.testing.assert_close(torch.tensor(two["trace"]), torch.tensor(result.elbo_trace), atol=1e-6, rtol=0)


def test_shards_split_every_point_once_and_batches_come_from_the_shard():
    shards = distributed.Shards(61, 2, 10, seed=3)
    a, b = shards.shard(0), shards.shard(1)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(61))
    assert shards.sizes == [5, 5] and shards.weight(0) == 0.5
    for step in range(3):
        idx = shards.indices(1, step)
        assert len(set(idx.tolist())) == 5 and set(idx.tolist()) <= set(b.tolist())
        assert torch.equal(idx, shards.indices(1, step))  # a function of (seed, rank, step)
    whole = distributed.Shards(61, 2, 0, seed=3)
    assert whole.sizes == [31, 30] and whole.weight(0) == 31 / 61
    with pytest.raises(ConfigError, match="svi.batch_size=1"):
        distributed.Shards(61, 2, 1, seed=3)


def test_checkpoint_and_resume_under_two_processes_is_bit_for_bit(runs):
    stopped = torch.load(runs / "stopped.pt", weights_only=True)
    assert stopped["steps"] == 3
    final = torch.load(runs / "final.pt", weights_only=True)
    resumed = torch.load(runs / "resumed.pt", weights_only=True)
    assert resumed["steps"] == final["steps"] == 6
    assert resumed["trace"] == final["trace"]
    for k, v in final["state"].items():
        assert torch.equal(v, resumed["state"][k]), k


def test_a_process_that_dies_makes_the_other_fail_with_one_line(tmp_path):
    assert _spawn(_die, tmp_path) == [0, 3]
    message = (tmp_path / "rank0.txt").read_text()
    assert "\n" not in message
    assert message.startswith("process 0 of 2: the all-reduce of the gradients failed: another process died")


def test_a_guide_that_cannot_take_given_points_is_refused_with_one_line(capsys):
    assert main(["run", "noisy_or_synthetic", "--nproc", "2", "--set", 'guides=["mean_field"]']) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "guide 'mean_field' of model 'noisy_or' cannot train in data-parallel SVI" in err
    assert main(["run", "gmm_faithful", "--nproc", "2"]) == 2
    assert "model 'gmm' has none" in capsys.readouterr().err
    assert main(["run", "noisy_or_synthetic", "--nproc", "0"]) == 2
    assert capsys.readouterr().err.strip() == "vizoo: error: --nproc must be an integer from 1 to 256, got 0"
    assert main(["run", "lda_synthetic", "--nproc", "2", "--timeout", "0"]) == 2
    assert capsys.readouterr().err.startswith("vizoo: error: --timeout must be a number of seconds above 0")


def test_updates_outside_the_optimiser_are_refused_with_one_line():
    cfg, _, guide, _ = _setup((LDA[0], LDA[1] + ["guide_args.local='cavi'"]))
    with pytest.raises(ConfigError, match=r"^guide_args.local='cavi': guide 'amortised'") as err:
        distributed.check_supported(cfg, {"amortised": guide}, 2)
    assert "\n" not in str(err.value)
    cfg = load_config(bundled_configs()[LDA[0]], [*LDA[1], "svi.elbo='TraceGraph_ELBO'"])
    with pytest.raises(ConfigError, match=r"^svi.elbo='TraceGraph_ELBO': its baselines"):
        distributed.check_config(cfg, 2)
