r"""Data-parallel SVI over processes with ``torch.distributed``: gloo on the CPU, NCCL on CUDA devices.

    vizoo run --nproc N CONFIG                          launches N processes on this machine, or
    torchrun --nproc_per_node=N -m vizoo.experiments.cli run CONFIG      (any launcher that sets WORLD_SIZE,
                                                                          RANK, LOCAL_RANK, MASTER_ADDR/PORT)

Every process runs the same runner (:func:`experiments.run.execute`) on the whole data set: the same checks,
the same initialisation and guides (same seeds; rank 0's global parameters are broadcast before each guide's
first step anyway), the same reference fit and evaluations (each process on all the data, after the per-point
rows are gathered back), so the processes reach each guide's training together.
Only rank 0 logs and writes the run folder, its checkpoints and its metrics. During SVI, process r of R owns
the shard S_r = {r, r + R, r + 2R, ...} of the N point indices (``DistributedSampler``'s split, without its
shuffling or padding), and each step draws its batch B_r from its shard alone (the whole shard without
``svi.batch_size``; else b_r = B / R of its points, B = svi.batch_size, the remainder to the first ranks),
passed to model and guide as ``subsample``.

The algebra. Pyro's plate, given the indices B_r (b_r of them), scales every per-point term by N / b_r, so
process r's estimate of the negative ELBO is

    L_r = G(eps_r) + (N / b_r) sum_{n in B_r} l_n(eps_r)

with G the global terms (the prior and q of global latents, LDA's beta) and l_n point n's terms, both
evaluated at random draws eps_r. The processes combine gradients, the estimate and any statistics a guide
exposes (:meth:`step_statistics`, LDA's natural step) by one all-reduce of the weighted sum with w_r = b_r / B:

    sum_r w_r grad L_r = sum_r (b_r / B) grad G(eps_r) + (N / B) sum_{n in B_1 u ... u B_R} grad l_n

which is the gradient one process computes on the union batch (plate scale N / B), exactly when the global
terms have no draws of their own (the VAE, the binary models, enumerated sites) and as the average of R
draws of them otherwise. With equal batches w_r = 1 / R: the average, as DistributedDataParallel takes it.
It holds for global parameters (model, networks, lambda) and for free per-point parameters alike: point n's
parameters get a gradient only from the process whose batch holds n (grad_{phi_n} L_r = 0 elsewhere), so
their combined gradient is w_r (N / b_r) grad l_n = (N / B) grad l_n, again the single process's. Only the
global parameters go through the all-reduce; every process then applies the same optimiser step to them, so
they stay identical without ever being sent again.

Per-point parameters (the guide's ``local_parameters``, experiments/param_groups.py) are sharded with their
points: process r keeps only the rows of the points in S_r (n_r of N; LDA's phi: the rows of its documents'
entries, ``local_row_points``), and the guide indexes them by global point indices through
:func:`guides.sharding.rows`. Their gradient is the owner's own, multiplied by w_r on the spot (the sum above
has one non-zero term), and the owner steps them; their optimiser state lives there alone. Elementwise
optimisers (Adam, SGD) make the owner's update of its rows the single process's, to the rounding of that one
product. Each process builds
the whole guide (same seed and data: the same rows everywhere) and keeps its part before the optimiser is
built, so start-up still holds N rows for a moment; training holds n_r.

Random numbers. Each step first seeds Pyro's generators (torch, Python, NumPy) with (seed, rank, step), and
draws the step's batch from a generator seeded the same way: a step's draws depend on nothing before it. A
single process can replay any process's step (the tests do: the weighted sum of the per-rank estimates at
the per-rank seeds is the distributed step, to round-off), and a resumed run continues bit for bit on the
same machine and process count from rank 0's checkpoint alone (global parameters, optimiser, schedule and
histories are the same on every process, and the random state each process needs is a function of the step).

Checkpoints. Rank 0 writes the whole, device-independent checkpoint a single process would: at each save
(rank 0's schedule, agreed in the step's all-reduce so that every process joins at the same step) every process
sends its per-point rows and their optimiser moments to rank 0 (``dist.gather``, padded to the largest shard,
with their global row indices), which puts them in place (:class:`GatheringCheckpointer`). A resumed process
reads the whole file and keeps its rows (:meth:`DataParallel.local_state`). When training ends every process
gathers every row (``all_gather``), so the evaluation sees all the points.

Failure. ``init_process_group`` and every collective run under a timeout (``--timeout``, default
:data:`TIMEOUT_S` seconds): a process that dies or stops answering makes the others raise
:class:`ParallelError` (one line) within it, never hang; the launcher then stops the rest and prints one line.
Ctrl-C is agreed on too: a process that receives it says so in its next all-reduce, and every process stops
at the same step boundary; so is train_svi's periodic check that every parameter is finite
(:meth:`DataParallel.agree`: a per-point row is checked by its owner alone), so every process replays the same
steps after a bad one.

What is refused, before any work (one-line :class:`ConfigError`): guides whose ``GuideSpec.data_parallel``
is off (they do not take given indices), per-point updates outside the optimiser (``guide_args.local_steps``,
LDA's ``local = "cavi"``: rows a process writes that the others would not see), ``TraceGraph_ELBO`` (its
baselines are per-process state), ``svi.max_seconds`` (each process's clock would stop it at another step).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..guides import sharding
from ..models.errors import ConfigError, VizooError
from . import param_groups
from .checkpoint import on_device
from .config import RunConfig, load_config
from .run import (
    RunResult,
    RunWriter,
    check_run_dir,
    execute,
    load_data,
    load_states,
    prepare,
)
from .train import interruptible, request_stop

TIMEOUT_S = 60.0
"""Seconds a collective (and the start-up rendezvous) waits for the other processes before failing."""
MAX_PROCESSES = 256


class ParallelError(VizooError):
    """Another process of a data-parallel run died or stopped answering (a collective failed or timed out)."""


class Context(NamedTuple):
    """This process's place in a data-parallel run, from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int


def context_from_env(environ=os.environ) -> Context | None:
    """The launcher's WORLD_SIZE, RANK and LOCAL_RANK (torchrun's, or :func:`launch`'s), or None for one
    process (unset, or WORLD_SIZE = 1)."""
    if "WORLD_SIZE" not in environ:
        return None
    try:
        world, rank = int(environ["WORLD_SIZE"]), int(environ["RANK"])
        local = int(environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError(f"data-parallel launch: WORLD_SIZE={environ.get('WORLD_SIZE')!r}, RANK={environ.get('RANK')!r} "
                          "must be integers (set by torchrun or vizoo run --nproc)") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"data-parallel launch: RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return Context(rank, world, local)


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


# --------------------------------------------------------------------------- shards and the step's batch


class Shards:
    """The split of N point indices over R processes, and each step's batch of each process.

    shard(r) = [r, r + R, r + 2R, ...] (n_r = |shard(r)|). batch_size B (0 or >= N: every point each step): each
    process takes b_r = B // R points, and one more for r < B % R; its batch at step t is its whole shard
    (b_r = n_r) or b_r of its points drawn without replacement from a generator seeded by (seed, r, t).
    weight(r) = b_r / B, the process's share of the union batch (module docstring)."""

    def __init__(self, num_points: int, world_size: int, batch_size: int, seed: int, device=None):
        if num_points < world_size:
            raise ConfigError(f"{num_points} training points cannot be shared by {world_size} processes: each needs at least one")
        self.num_points, self.world_size, self.seed = num_points, world_size, int(seed)
        self.device = device
        whole = not batch_size or batch_size >= num_points
        total = num_points if whole else batch_size
        if total < world_size:
            raise ConfigError(f"svi.batch_size={batch_size} is smaller than the {world_size} processes: each step "
                              "needs at least one point per process")
        self.whole = whole
        self.sizes = [len(range(r, num_points, world_size)) if whole else total // world_size + (r < total % world_size)
                      for r in range(world_size)]
        self.total = sum(self.sizes)

    def shard(self, rank: int) -> Tensor:
        return torch.arange(rank, self.num_points, self.world_size, device=self.device)

    def step_seed(self, rank: int, step: int) -> int:
        """The seed of process ``rank``'s draws at ``step``: a function of (seed, rank, step) only."""
        digest = hashlib.blake2b(f"{self.seed},{rank},{step}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little")  # Pyro's seeds are 32-bit

    def indices(self, rank: int, step: int) -> Tensor:
        """Process ``rank``'s points at ``step``: (b_r,)."""
        shard = self.shard(rank)
        if self.whole:
            return shard
        gen = torch.Generator().manual_seed(self.step_seed(rank, step))
        return shard[torch.randperm(shard.shape[0], generator=gen)[: self.sizes[rank]].to(shard.device)]

    def weight(self, rank: int) -> float:
        return self.sizes[rank] / self.total

    def step_kwargs(self, rank: int, step: int) -> dict[str, Tensor]:
        """Seed Pyro's generators for process ``rank``'s ``step`` and give its model and guide arguments."""
        pyro.set_rng_seed(self.step_seed(rank, step))
        return {"subsample": self.indices(rank, step)}


# --------------------------------------------------------------------------- one guide's training, one process


_INTERRUPTED = False  # this process received Ctrl-C; told to the others in the next all-reduce


class DataParallel:
    """The ``parallel`` hook of :func:`experiments.train.train_svi` for one process. Built before the optimiser: it
    cuts the guide's per-point parameters to this process's rows (``row_maps``: name -> :class:`RowMap`;
    ``row_counts``: name -> rows held by each process; ``params``: the global trainable parameters, the only ones
    all-reduced). Then ``begin(optim, checkpoint, resume)`` (this process's part of a resumed state, and the
    checkpointer every process uses), ``broadcast()`` before the first step, ``step_kwargs(step)`` (this
    process's points and seed), ``reduce(loss)`` (the weighted all-reduce of the module docstring over the global
    gradients, statistics, the estimate, the stop flag and the save schedule), and ``finish()`` (every row on
    every process again). ``comm_seconds``: time spent in collectives (waiting for the slowest process included);
    ``reduces``: their count; ``reduced_numel``: the last all-reduced buffer's size."""

    def __init__(self, model: nn.Module, guide: nn.Module, shards: Shards, rank: int, timeout: float = TIMEOUT_S,
                 group=None, x: Tensor | None = None):
        self.model, self.guide, self.shards, self.rank = model, guide, shards, rank
        self.timeout, self.group = timeout, group
        # the guide's free per-point parameters: this process keeps the rows of its shard's points only
        self.row_maps, self.row_counts = shard_local(guide, x, shards, rank)
        self.local_keys = {name: sharding.parameter_key(guide, name) for name in self.row_maps}
        local = {id(guide._parameters[k]) for k in self.local_keys.values()}  # noqa: SLF001
        self.local_params = [guide._parameters[k] for k in self.local_keys.values()]  # noqa: SLF001
        self.params = [p for p in model.parameters() if p.requires_grad] + \
            [p for p in guide.parameters() if p.requires_grad and id(p) not in local]
        self.comm_seconds = 0.0
        self.reduces = 0
        self.reduced_numel = 0  # elements in the last all-reduce's buffer (global parameters, flags, statistics)
        self.optim, self.checkpoint = None, None  # train_svi's optimiser and (rank 0) checkpointer: begin()
        self._step = 0
        self._save_due = False  # rank 0's checkpoint schedule, agreed in the all-reduce of the step before

    def _collective(self, what: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except RuntimeError as err:  # DistBackendError and gloo's own: a peer closed the connection, or the timeout
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ParallelError(f"process {self.rank} of {self.shards.world_size}: {what} failed: another process died "
                                f"or did not answer within {self.timeout:g} s ({first})") from None
        self.comm_seconds += time.perf_counter() - start

    def broadcast(self) -> None:
        """Rank 0's parameters and buffers (model and guide) to every process, but for the per-point rows each
        process holds of its own points (built from the same seed and data in every process)."""
        skip = set(self.local_keys.values())
        tensors = [*self.model.state_dict().values(), *(v for k, v in self.guide.state_dict().items() if k not in skip)]

        def run() -> None:
            for t in tensors:
                if t.dtype == torch.bool:  # gloo has no bool: through int64
                    tmp = t.to(torch.int64)
                    dist.broadcast(tmp, 0, group=self.group)
                    t.copy_(tmp.bool())
                else:
                    dist.broadcast(t, 0, group=self.group)

        with torch.no_grad():
            self._collective("broadcasting rank 0's parameters", run)

    def step_kwargs(self, step: int) -> dict[str, Tensor]:
        self._step = step
        return self.shards.step_kwargs(self.rank, step)

    def reduce(self, loss: float) -> float:
        """Replace this process's gradients (and ``guide.step_statistics()``) by sum_r w_r of every process's, and
        return sum_r w_r loss_r. One flat buffer, one all-reduce: [loss, stop, save due, has-gradient flags,
        global gradients, statistics], in the widest dtype of the parameters (float32 models send float32: half
        the bytes); the estimate, the stop flag and rank 0's save schedule then go in a second, three-number
        float64 all-reduce. A parameter with no gradient on any process keeps none (as one process). The
        per-point rows' gradients are this process's alone: multiplied by w_r here, and sent nowhere."""
        w = self.shards.weight(self.rank)
        stats = list(getattr(self.guide, "step_statistics", lambda: [])())
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = functools.reduce(torch.promote_types, [p.dtype for p in self.params] + [s.dtype for s in stats], torch.float32)
        due = self.rank == 0 and self.checkpoint is not None and self.checkpoint.due(self._step + 1, time.perf_counter())
        head = torch.tensor([w * loss, float(_INTERRUPTED), float(due)], dtype=torch.float64, device=device)
        has = torch.tensor([p.grad is not None for p in self.params], dtype=dtype, device=device)
        parts = [head.to(dtype), has] if dtype == torch.float64 else [has]
        for p in self.local_params:  # the owner's gradient, weighted as the all-reduce weights the rest; sent nowhere
            if p.grad is not None:
                p.grad.mul_(w)
        parts += [(p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) * w for p in self.params]
        parts += [s.reshape(-1).to(dtype) * w for s in stats]
        flat = torch.cat(parts)
        self.reduced_numel = flat.numel()

        def run() -> None:
            dist.all_reduce(flat, group=self.group)
            if dtype != torch.float64:
                dist.all_reduce(head, group=self.group)

        self._collective("the all-reduce of the gradients", run)
        self.reduces += 1
        if dtype == torch.float64:
            head, flat = flat[:3], flat[3:]
        self._save_due = bool(head[2] > 0)
        if head[1] > 0:  # some process was interrupted: every process stops after this step
            request_stop()
        offset = len(self.params)
        for p, present in zip(self.params, flat[:offset].tolist()):
            n = p.numel()
            if present:
                value = flat[offset:offset + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = value
                else:
                    p.grad.copy_(value)
            offset += n
        for s in stats:
            n = s.numel()
            s.copy_(flat[offset:offset + n].view_as(s))
            offset += n
        return float(head[0])

    def agree(self, bad: str) -> str:
        """train_svi's full check, agreed: ``bad`` (the name of a non-finite parameter here, or "") on every
        process when any process found one (its own per-point rows are checked by it alone), so that every
        process replays the same steps (one small all-reduce, at each full check)."""
        flag = torch.tensor([float(bool(bad))], dtype=torch.float64,
                            device=self.params[0].device if self.params else self.shards.device)
        self._collective("agreeing on the parameter check", lambda: dist.all_reduce(flag, group=self.group))
        if bad or not flag.item():
            return bad
        return "on another process (one of its per-point rows)"

    # ------------------------------------------------------------------ the per-point rows: checkpoints and the end

    def begin(self, optim, checkpoint, resume: dict | None):
        """train_svi's start: its optimiser (built over the rows this process holds), its checkpointer (rank 0's;
        None elsewhere) and the checkpoint it resumes from (whole, as rank 0 wrote it). Returns the checkpointer
        every process uses (:class:`GatheringCheckpointer`: its saves gather the rows to rank 0, on a schedule
        agreed in the all-reduce) and this process's part of ``resume`` (:meth:`local_state`)."""
        self.optim, self.checkpoint = optim, checkpoint
        self._save_due = False
        return GatheringCheckpointer(self, checkpoint), self.local_state(resume)

    def _optimiser_index(self) -> dict[str, int]:
        """Local parameter name -> its index in the optimiser's state_dict (its position over the param groups)."""
        order = {id(p): i for i, p in enumerate(p for group in self.optim.param_groups for p in group["params"])}
        return {name: order[id(self.guide._parameters[key])] for name, key in self.local_keys.items()  # noqa: SLF001
                if id(self.guide._parameters[key]) in order}  # noqa: SLF001

    def _local_moments(self, entry: dict, rows: int, like: Tensor) -> list[str]:
        """The keys of an optimiser state entry that hold one value per row (Adam's moments, SGD's momentum)."""
        return sorted(k for k, v in entry.items() if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == rows
                      and v.shape[1:] == like.shape[1:])

    def local_state(self, state: dict | None) -> dict | None:
        """A whole training state (a checkpoint) -> this process's: the rows of its points of every local
        parameter and of their optimiser moments; the rest as it is."""
        if state is None or not self.row_maps:
            return state
        guide_state = dict(state["guide_state"])
        for name, key in self.local_keys.items():
            guide_state[key] = guide_state[key][self.row_maps[name].held.to(guide_state[key].device)]
        optimiser = {**state["optimiser"], "state": dict(state["optimiser"]["state"])}
        for name, i in self._optimiser_index().items():
            entry = optimiser["state"].get(i)
            if entry is None:
                continue
            row_map, like = self.row_maps[name], self.guide._parameters[self.local_keys[name]]  # noqa: SLF001
            entry = dict(entry)
            for k in self._local_moments(entry, row_map.num_rows, like):
                entry[k] = entry[k][row_map.held.to(entry[k].device)]
            optimiser["state"][i] = entry
        return {**state, "guide_state": guide_state, "optimiser": optimiser}

    def full_state(self, state: dict) -> dict | None:
        """This process's training state -> the whole one, on rank 0 (None elsewhere): every process sends its
        rows of the local parameters and their optimiser moments to rank 0 (a collective: every process calls it
        at the same step)."""
        if not self.row_maps:
            return state if self.rank == 0 else None
        lead = self.rank == 0
        guide_state = dict(state["guide_state"])
        for name, key in self.local_keys.items():
            guide_state[key] = self._gather(name, guide_state[key], to_all=False)
        optimiser = {**state["optimiser"], "state": dict(state["optimiser"]["state"])}
        for name, i in self._optimiser_index().items():
            entry = optimiser["state"].get(i)
            if entry is None:
                continue
            like = self.guide._parameters[self.local_keys[name]]  # noqa: SLF001
            entry = dict(entry)
            for k in self._local_moments(entry, like.shape[0], like):
                entry[k] = self._gather(name, entry[k], to_all=False)
            optimiser["state"][i] = entry
        return {**state, "guide_state": guide_state, "optimiser": optimiser} if lead else None

    def finish(self) -> None:
        """The end of training: every process holds every row of the local parameters again (gathered from their
        owners), for the evaluation on the whole data."""
        for name in list(self.row_maps):
            key = self.local_keys[name]
            full = self._gather(name, self.guide._parameters[key].detach(), to_all=True)  # noqa: SLF001
            sharding.release(self.guide, name, full)
        self.row_maps = {}
        self.local_params = []

    def _gather(self, name: str, value: Tensor, to_all: bool) -> Tensor | None:
        """The whole (num_rows, ...) tensor from every process's rows ``value`` (n_r, ...) of local parameter
        ``name``: on every process (``to_all``) or on rank 0 (None elsewhere). Rows are padded to the largest
        shard's count and sent with their global indices."""
        row_map, counts = self.row_maps[name], self.row_counts[name]
        most = max(counts)
        rows = value.new_zeros((most, *value.shape[1:]))
        rows[: value.shape[0]] = value
        index = row_map.held.new_zeros(most)
        index[: value.shape[0]] = row_map.held
        world = self.shards.world_size
        lead = to_all or self.rank == 0
        all_rows = [torch.empty_like(rows) for _ in range(world)] if lead else None
        all_index = [torch.empty_like(index) for _ in range(world)] if lead else None

        def run() -> None:
            if to_all:
                dist.all_gather(all_rows, rows, group=self.group)
                dist.all_gather(all_index, index, group=self.group)
            else:
                dist.gather(rows, all_rows, dst=0, group=self.group)
                dist.gather(index, all_index, dst=0, group=self.group)

        self._collective(f"gathering the rows of {name}", run)
        if not lead:
            return None
        full = value.new_empty((row_map.num_rows, *value.shape[1:]))
        for r in range(world):
            full[all_index[r][: counts[r]]] = all_rows[r][: counts[r]]
        return full


class GatheringCheckpointer:
    """The checkpointer of every process of a data-parallel run: ``due`` is rank 0's schedule as agreed in the
    step's all-reduce (so every process reaches a save together), ``save`` gathers the per-point rows to rank 0
    (:meth:`DataParallel.full_state`), which writes the whole, device-independent checkpoint; the other
    processes write nothing."""

    def __init__(self, parallel: DataParallel, inner):
        self.parallel, self.inner = parallel, inner

    def due(self, step: int, now: float) -> bool:
        return self.parallel._save_due and step == self.parallel._step + 1

    def save(self, state: dict) -> None:
        whole = self.parallel.full_state(state)
        if self.inner is not None:
            self.inner.save(whole)


def shard_local(guide: nn.Module, x: Tensor | None, shards: Shards, rank: int) -> tuple[dict, dict]:
    """Keep, in ``guide``, only the rows of process ``rank``'s points of every local parameter
    (``guide.local_parameters``; guides/sharding.py). Returns ({name: RowMap}, {name: [rows held by each
    process]}). The rows' points come from ``sharding.row_points`` (point n, or the guide's own map)."""
    names = param_groups.local_parameters(guide)
    maps, counts = {}, {}
    if not names:
        return maps, counts
    owner = torch.empty(shards.num_points, dtype=torch.long, device=shards.device)
    for r in range(shards.world_size):
        owner[shards.shard(r)] = r
    for name in names:
        points = sharding.row_points(guide, name, x, shards.num_points)
        owners = owner[points.to(owner.device)]
        counts[name] = torch.bincount(owners, minlength=shards.world_size).tolist()
        held = torch.nonzero(owners == rank).reshape(-1)
        maps[name] = sharding.hold(guide, name, held)
    return maps, counts


# --------------------------------------------------------------------------- the run, in one process of many


def check_config(cfg: RunConfig, world_size: int) -> None:
    """Refuse, before any work (and before any process starts), a config that data-parallel SVI cannot run as
    the same algorithm (module docstring): guides without ``GuideSpec.data_parallel``, TraceGraph_ELBO,
    ``svi.max_seconds``."""
    spec = cfg.spec
    where = f"data-parallel SVI ({world_size} processes)"
    able = [g for g, gs in spec.guides.items() if gs.data_parallel]
    for g in cfg.guides:
        gs = spec.guides.get(g)
        if gs is None or not gs.data_parallel:
            offer = f"its guides that can: {', '.join(able)}" if able else f"model {spec.name!r} has none"
            raise ConfigError(f"guides: guide {g!r} of model {spec.name!r} cannot train in {where}: it does not take "
                              f"given point indices (subsample); {offer}")
    if cfg.svi.elbo == "TraceGraph_ELBO":
        raise ConfigError(f"svi.elbo='TraceGraph_ELBO': its baselines are each process's own state in {where}; "
                          "use Trace_ELBO or TraceEnum_ELBO")
    if getattr(cfg.svi, "max_seconds", None) is not None:
        raise ConfigError(f"svi.max_seconds={cfg.svi.max_seconds}: each process's clock would stop it at another step "
                          f"in {where}; give svi.steps")


def check_supported(cfg: RunConfig, guides: dict[str, nn.Module], world_size: int) -> None:
    """:func:`check_config`, and the built guides' options: no per-point updates outside the optimiser."""
    check_config(cfg, world_size)
    where = f"data-parallel SVI ({world_size} processes)"
    for g, guide in guides.items():
        if getattr(guide, "local_steps", 0):
            raise ConfigError(f"guide_args.local_steps={guide.local_steps}: guide {g!r}'s local updates write its points' "
                              f"parameters outside the optimiser, which {where} does not share; use 0")
        if getattr(guide, "local", None) == "cavi":
            raise ConfigError(f"guide_args.local='cavi': guide {g!r}'s document updates write state outside the optimiser, "
                              f"which {where} does not share; use the guide's default")


def _quiet(*args, **kwargs) -> None:
    pass


def _sigint_agreed(signum, frame) -> None:
    """Ctrl-C in a data-parallel run: remembered, and told to the others in the next all-reduce, so every
    process stops at the same step (a second Ctrl-C raises KeyboardInterrupt)."""
    global _INTERRUPTED
    if _INTERRUPTED:
        raise KeyboardInterrupt
    _INTERRUPTED = True


def worker(ctx: Context, cfg: RunConfig | None = None, resume: str | Path | None = None, progress: bool | None = None,
           timeout: float = TIMEOUT_S, log=print) -> RunResult:
    """Run ``cfg`` (or resume the run folder ``resume``) as process ``ctx.rank`` of ``ctx.world_size``: join the
    process group (gloo, or NCCL for a CUDA device), check, then the ordinary runner with each guide's training
    data-parallel. Rank 0 logs and writes; the others return their in-memory result."""
    global _INTERRUPTED
    timeout = check_timeout(timeout)
    run_dir = check_run_dir(resume) if resume is not None else None
    if run_dir is not None:
        cfg = load_config(run_dir / "config.toml")
    device = getattr(cfg, "device", "cpu")
    backend = backend_for(device)
    if backend == "nccl" and device in ("cuda", "auto"):
        torch.cuda.set_device(ctx.local_rank)  # "cuda" is then this process's own device
    lead = ctx.rank == 0
    log = log if lead else _quiet
    try:
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ParallelError(f"process {ctx.rank} of {ctx.world_size}: could not join the other processes within "
                            f"{timeout:g} s ({first})") from None
    parallel: list[DataParallel] = []
    _INTERRUPTED = False
    try:
        with interruptible():
            main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, _sigint_agreed) if main else None
            try:
                spec = cfg.spec
                prep = prepare(cfg, spec, load_data(cfg, spec, run_dir))
                check_supported(cfg, prep.guides, ctx.world_size)
                states = None
                if run_dir is not None:
                    states = {g: on_device(s, prep.x.device) for g, s in load_states(prep, run_dir, final=False).items()}
                writer = None
                if lead:
                    writer = RunWriter(run_dir, new=False) if run_dir is not None else RunWriter.new(cfg)
                num_points = prep.x.shape[0]

                def data_parallel(model: nn.Module, guide: nn.Module, seed: int) -> DataParallel:
                    shards = Shards(num_points, ctx.world_size, cfg.svi.batch_size, seed, prep.x.device)
                    parallel.append(DataParallel(model, guide, shards, ctx.rank, timeout, x=prep.x))
                    return parallel[-1]

                log(f"data-parallel SVI: {ctx.world_size} processes ({backend}), each on its shard of the "
                    f"{num_points} points" + (f", {cfg.svi.batch_size // ctx.world_size}+ of them a step"
                                              if 0 < cfg.svi.batch_size < num_points else ""))
                result = execute(prep, writer, states, progress=progress if lead else False, log=log,
                                 data_parallel=data_parallel)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
        comm = sum(p.comm_seconds for p in parallel)
        log(f"data-parallel SVI: {sum(p.reduces for p in parallel)} all-reduces, {comm:.2f} s in collectives (rank 0)")
        return result
    finally:
        _INTERRUPTED = False
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the launcher: vizoo run --nproc N


def check_nproc(nproc) -> int:
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_PROCESSES:
        raise ConfigError(f"--nproc must be an integer from 1 to {MAX_PROCESSES}, got {nproc!r}")
    return nproc


def check_timeout(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e6:
        raise ConfigError(f"--timeout must be a number of seconds above 0 (and below 1e6), got {timeout!r}")
    return float(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for the processes' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    said = [line for line in lines if line.startswith("vizoo:")]
    return (said or lines or [""])[-1].strip()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(nproc: int, run_args: list[str], timeout: float = TIMEOUT_S, stderr=None) -> int:
    """Start ``nproc`` processes of ``vizoo run RUN_ARGS`` on this machine (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR=127.0.0.1 and a free MASTER_PORT in their environment; OMP_NUM_THREADS = cores / nproc unless
    set) and wait for them. Rank 0's standard output is passed through; every process's standard error is
    kept, and shown for rank 0 when all succeed. When one fails, the others fail by themselves within
    ``timeout`` (they are stopped after that and a grace period); the run's failure is one line, from the
    process that failed first. Returns the exit status: 0, or the first failed process's (1 when killed)."""
    check_nproc(nproc)
    timeout = check_timeout(timeout)
    stderr = sys.stderr if stderr is None else stderr
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logs = Path(tempfile.mkdtemp(prefix="vizoo-nproc-"))
    procs, files = [], []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the processes; they agree to stop
    try:
        for rank in range(nproc):
            err = open(logs / f"rank{rank}.err", "w", encoding="utf-8")
            files.append(err)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vizoo.experiments.cli", "run", *run_args],
                env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)), stdin=subprocess.DEVNULL,
                stdout=None if rank == 0 else subprocess.DEVNULL,
                stderr=err, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
        first_failed: int | None = None
        deadline = None
        while any(p.poll() is None for p in procs):
            if first_failed is None:
                failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
                if failed:
                    first_failed, deadline = failed[0], time.monotonic() + timeout + 30
            if deadline is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                time.sleep(2)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                break
            time.sleep(0.05)
        for p in procs:
            p.wait()
        codes = [p.returncode for p in procs]
        if first_failed is None:
            bad = [r for r, c in enumerate(codes) if c != 0]
            first_failed = bad[0] if bad else None
    finally:
        signal.signal(signal.SIGINT, previous)
        for f in files:
            f.close()
    try:
        if first_failed is None or set(codes) == {130}:  # finished, or stopped together by Ctrl-C (resumable)
            text = (logs / "rank0.err").read_text(encoding="utf-8", errors="replace")
            if text:
                stderr.write(text)
            return codes[0]
        said = _last_line(logs / f"rank{first_failed}.err")
        code = codes[first_failed]
        if said:
            print(said, file=stderr)
        else:
            lead = _last_line(logs / "rank0.err") if first_failed != 0 else ""
            print(f"vizoo: error: process {first_failed} of {nproc} {_describe_exit(code)}" + (f"; rank 0: {lead}" if lead else ""),
                  file=stderr)
        return code if code > 0 else 1
    finally:
        shutil.rmtree(logs, ignore_errors=True)
