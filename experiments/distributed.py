r"""Data-parallel SVI over processes with ``torch.distributed``: gloo on the CPU, NCCL on CUDA devices.

    vizoo run --nproc N CONFIG                          launches N processes on this machine, or
    torchrun --nproc_per_node=N -m vizoo.experiments.cli run CONFIG      (any launcher that sets WORLD_SIZE,
                                                                          RANK, LOCAL_RANK, MASTER_ADDR/PORT)

Every process runs the same runner (:func:`experiments.run.execute`) on the whole data set: the same checks,
the same initialisation and guides (same seeds; rank 0's parameters are broadcast before each guide's first
step anyway), the same reference fit and evaluations, so the processes reach each guide's training together.
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
their combined gradient is (N / B) grad l_n, again the single process's. Every process then applies the same
optimiser step to the same parameters, so they stay identical without ever being sent again.

Random numbers. Each step first seeds Pyro's generators (torch, Python, NumPy) with (seed, rank, step), and
draws the step's batch from a generator seeded the same way: a step's draws depend on nothing before it. A
single process can replay any process's step (the tests do: the weighted sum of the per-rank estimates at
the per-rank seeds is the distributed step, to round-off), and a resumed run continues bit for bit on the
same machine and process count from rank 0's checkpoint alone (parameters, optimiser, schedule and histories
are the same on every process, and the random state each process needs is a function of the step).

Failure. ``init_process_group`` and every collective run under a timeout (``--timeout``, default
:data:`TIMEOUT_S` seconds): a process that dies or stops answering makes the others raise
:class:`ParallelError` (one line) within it, never hang; the launcher then stops the rest and prints one line.
Ctrl-C is agreed on too: a process that receives it says so in its next all-reduce, and every process stops
at the same step boundary.

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

from ..models.errors import ConfigError, VizooError
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
    """The ``parallel`` hook of :func:`experiments.train.train_svi` for one process: ``broadcast()`` before the
    first step, ``step_kwargs(step)`` (this process's points and seed), ``reduce(loss)`` (the weighted all-reduce
    of the module docstring over gradients, statistics, the estimate and the stop flag). ``comm_seconds``: time
    spent in collectives (waiting for the slowest process included); ``reduces``: their count."""

    def __init__(self, model: nn.Module, guide: nn.Module, shards: Shards, rank: int, timeout: float = TIMEOUT_S,
                 group=None):
        self.model, self.guide, self.shards, self.rank = model, guide, shards, rank
        self.timeout, self.group = timeout, group
        self.params = [p for p in model.parameters() if p.requires_grad] + [p for p in guide.parameters() if p.requires_grad]
        self.comm_seconds = 0.0
        self.reduces = 0

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
        """Rank 0's parameters and buffers (model and guide) to every process."""
        tensors = [*self.model.state_dict().values(), *self.guide.state_dict().values()]

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
        return self.shards.step_kwargs(self.rank, step)

    def reduce(self, loss: float) -> float:
        """Replace this process's gradients (and ``guide.step_statistics()``) by sum_r w_r of every process's, and
        return sum_r w_r loss_r. One flat buffer, one all-reduce: [loss, stop, has-gradient flags, gradients,
        statistics], in the widest dtype of the parameters (float32 models send float32: half the bytes); the
        estimate and the stop flag then go in a second, two-number float64 all-reduce. A parameter with no
        gradient on any process keeps none (as one process)."""
        w = self.shards.weight(self.rank)
        stats = list(getattr(self.guide, "step_statistics", lambda: [])())
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = functools.reduce(torch.promote_types, [p.dtype for p in self.params] + [s.dtype for s in stats], torch.float32)
        head = torch.tensor([w * loss, float(_INTERRUPTED)], dtype=torch.float64, device=device)
        has = torch.tensor([p.grad is not None for p in self.params], dtype=dtype, device=device)
        parts = [head.to(dtype), has] if dtype == torch.float64 else [has]
        parts += [(p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) * w for p in self.params]
        parts += [s.reshape(-1).to(dtype) * w for s in stats]
        flat = torch.cat(parts)

        def run() -> None:
            dist.all_reduce(flat, group=self.group)
            if dtype != torch.float64:
                dist.all_reduce(head, group=self.group)

        self._collective("the all-reduce of the gradients", run)
        self.reduces += 1
        if dtype == torch.float64:
            head, flat = flat[:2], flat[2:]
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
                    parallel.append(DataParallel(model, guide, shards, ctx.rank, timeout))
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
