"""The ``vizoo`` command line.

    vizoo run CONFIG.toml [--set key=value ...] [--out DIR] [--no-progress]
    vizoo run --resume RUN_DIR [--set device=cpu|cuda|cuda:N|auto] [--no-progress]
    vizoo run --nproc N CONFIG.toml [...] [--timeout S]    data-parallel SVI over N processes (experiments/distributed.py);
                              under torchrun (WORLD_SIZE > 1) each process is one of them
    vizoo compare MODEL [--data D] [--seeds N] [--guides a,b] [--time S] [--set key=value ...] [--out DIR] [--no-progress]
    vizoo report [--out DIR] [--seeds N] [--no-progress]
    vizoo list
    vizoo show MODEL          (a model's name, or the path of a model declaration, MODEL.toml)
    vizoo --help

Errors in the input (config, overrides, data) print one line to stderr and exit with status 2;
a non-finite ELBO or gradient during training prints one line naming the step, the parameter and the site,
and exits with status 1 (metrics.json says "failed"; the last good checkpoint is kept). Ctrl-C during
training stops cleanly: what finished is written, metrics.json says "interrupted", and the exit status is
130; ``vizoo run --resume RUN_DIR`` continues it (or a killed run) from its checkpoints. A file or folder
that cannot be written (a read-only or full disk) prints one line naming the path and the errno and exits
with status 2 when the run folder could not be made, 1 during the work (metrics.json then says "failed"
when the disk still takes it, and ``--resume`` continues the run once there is room).

``vizoo run`` is the Python API's ``vizoo.fit(..., out=DIR)`` with a config file: both go through the one
runner (experiments/run.py: ``prepare``, then ``execute`` with a ``RunWriter``); ``vizoo compare`` is
``vizoo.compare`` (experiments/api.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..models import declaration, declared
from ..models.errors import ConfigError, ImpossibleResult, VizooError
from . import distributed
from .compare import CompareOptions, compare
from .config import bundled_configs, load_config
from .overview import ReportOptions, write_report
from .registry import DECLARATIONS, MODELS
from .report import OutputError, describe_os_error
from .run import resume_experiment, run_experiment
from .train import NonFiniteLoss


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"vizoo: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vizoo",
        description="Latent-variable models in Pyro: mean-field and amortised guides checked against exact EM.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run an experiment from a TOML config")
    run.add_argument("config", nargs="?", default=None,
                     help="path to a TOML config, or the name of a bundled one (see 'vizoo list')")
    run.add_argument("--resume", default=None, metavar="RUN_DIR",
                     help="continue a killed or interrupted run from its last checkpoints, with its own config")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set svi.steps=200 --set guides='[\"mean_field\"]'")
    run.add_argument("--out", default=None, help="folder for run folders (default: the config's output_dir, 'runs')")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--nproc", type=int, default=None, metavar="N",
                     help="data-parallel SVI over N processes on this machine (gloo; each on its shard of the points)")
    run.add_argument("--timeout", type=float, default=distributed.TIMEOUT_S, metavar="SECONDS",
                     help=f"data-parallel runs: how long a process waits for the others (default {distributed.TIMEOUT_S:g})")
    cmp = sub.add_parser("compare", help="train every guide of a model and the exact reference; split the gaps; ArviZ")
    cmp.add_argument("model", help="a model's name (see 'vizoo list') or the path of a model declaration (.toml)")
    cmp.add_argument("--data", default=None, help="one of the model's data sets (default: its bundled config's)")
    cmp.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    cmp.add_argument("--guides", default="", help="comma-separated guides (default: every registered guide and the "
                     "Pyro baselines AutoNormal, AutoDelta where they apply)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key of the base config, e.g. --set svi.steps=200")
    cmp.add_argument("--draws", type=int, default=1000, help="posterior draws per method for the pictures and ArviZ")
    cmp.add_argument("--time", type=float, default=None, metavar="S",
                     help="the fair mode: train every guide for S seconds of wall time (svi.max_seconds), as many "
                     "steps as fit (svi.steps the limit unless set with --set), and report each one's time to within "
                     "1%% of its final ELBO")
    cmp.add_argument("--restarts", type=int, default=8, help="random starts per point when searching for the family's "
                     "best member q* of the gap split (default 8; beside the prior, the guide's q and the mode)")
    cmp.add_argument("--out", default="runs", help="folder for the comparison's folder (default: runs)")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep = sub.add_parser("report", help="compare guides for every registered model, run the seed experiments, "
                         "write one report (Markdown and HTML)")
    rep.add_argument("--out", default="runs", help="folder for the report's folder (default: runs)")
    rep.add_argument("--seeds", type=int, default=2, help="seeds per model (default 2)")
    rep.add_argument("--models", default="", help="comma-separated models (default: every registered model)")
    rep.add_argument("--tiny", action="store_true", help="tiny sizes and budgets (a smoke test of the whole report)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list models, their guides, valid ELBOs and data sets, and bundled configs")
    show = sub.add_parser("show", help="show a declared model: its generative process, parameters, plates and tensor shapes")
    show.add_argument("model", help="the path of a model declaration (.toml), or the name of a declared model (see 'vizoo list')")
    return parser


def cmd_list() -> None:
    for spec in MODELS.values():
        print(f"{spec.name}: {spec.summary}")
        print(f"  exact reference: {spec.exact.method if spec.exact else 'none'}")
        for g in spec.guides.values():
            print(f"  guide {g.name}: {g.summary}  [ELBOs: {', '.join(g.valid_elbos)}]")
        print(f"  data sets: {', '.join(spec.datasets)}, file (data.path = .npy/.csv)")
    print("bundled configs: " + ", ".join(bundled_configs()))


def cmd_show(ns: argparse.Namespace) -> None:
    if ns.model.endswith(".toml"):
        decl = declaration.load(ns.model)
    elif ns.model in DECLARATIONS:
        decl = DECLARATIONS[ns.model]
    else:
        kind = "a hand-written model (see its module's docstring)" if ns.model in MODELS else "unknown"
        raise ConfigError(f"model {ns.model!r} is {kind}: 'vizoo show' takes a declared model "
                          f"({', '.join(DECLARATIONS)}) or the path of a declaration (.toml)")
    print(declared.show(decl))


def cmd_run(ns: argparse.Namespace) -> int:
    launch = ns.nproc is not None and distributed.check_nproc(ns.nproc) > 1
    ctx = distributed.context_from_env()
    if (launch or ctx is not None) and ns.resume is not None and (ns.config is not None or ns.overrides or ns.out is not None):
        raise ConfigError("--resume continues a data-parallel run with the config in its folder: give no CONFIG, --set or --out")
    if launch:  # start N processes of this same command
        if ns.resume is None:
            distributed.check_config(_load_run_config(ns), ns.nproc)  # refused here, before any process starts
        return distributed.launch(ns.nproc, _worker_args(ns), ns.timeout)
    if ctx is not None:  # one process of a data-parallel run (torchrun, or vizoo run --nproc)
        cfg = None if ns.resume is not None else _load_run_config(ns)
        result = distributed.worker(ctx, cfg, ns.resume, progress=False if ns.no_progress else None, timeout=ns.timeout)
        if ctx.rank == 0:
            print(f"report: {result.run_dir / 'report.md'}")
        return 130 if result.interrupted else 0
    if ns.resume is not None:
        device = [o.partition("=")[2].strip().strip("'\"") for o in ns.overrides if o.partition("=")[0].strip() == "device"]
        if ns.config is not None or len(ns.overrides) > len(device[-1:]) or ns.out is not None:
            raise ConfigError("--resume continues a run with the config in its folder: give no CONFIG, --set or --out "
                              "(but --set device=..., to continue on another device)")
        result = resume_experiment(ns.resume, progress=False if ns.no_progress else None, device=(device or [None])[-1])
    else:
        result = run_experiment(_load_run_config(ns), progress=False if ns.no_progress else None)
    print(f"report: {result.run_dir / 'report.md'}")
    return 130 if result.interrupted else 0


def _worker_args(ns: argparse.Namespace) -> list[str]:
    """The ``vizoo run`` arguments each process of ``--nproc N`` gets: the same, without ``--nproc``."""
    args = [] if ns.config is None else [ns.config]
    for o in ns.overrides:
        args += ["--set", o]
    args += [] if ns.out is None else ["--out", ns.out]
    args += [] if ns.resume is None else ["--resume", ns.resume]
    return args + (["--no-progress"] if ns.no_progress else []) + ["--timeout", repr(ns.timeout)]


def _load_run_config(ns: argparse.Namespace):
    """The config of ``vizoo run CONFIG [--set ...] [--out DIR]``: a file, or a bundled config's name."""


    if ns.config is None:
        raise ConfigError("run needs a CONFIG (a TOML file or a bundled config's name) or --resume RUN_DIR")
    path = ns.config
    if not Path(path).exists() and path in bundled_configs():
        path = bundled_configs()[path]
    overrides = list(ns.overrides)
    if ns.out is not None:
        overrides.append(f"output_dir={json.dumps(ns.out)}")
    return load_config(path, overrides)


def cmd_compare(ns: argparse.Namespace) -> int:
    guides = tuple(g.strip() for g in ns.guides.split(",") if g.strip())
    result = compare(CompareOptions(ns.model, ns.data, ns.seeds, guides, tuple(ns.overrides), ns.out,
                                    not ns.no_progress, ns.draws, restarts=ns.restarts, time=ns.time))
    print(f"comparison: {result.out_dir / 'compare.md'}")
    return 130 if result.interrupted else 0


def cmd_report(ns: argparse.Namespace) -> int:
    models = tuple(m.strip() for m in ns.models.split(",") if m.strip())
    result = write_report(ReportOptions(ns.out, ns.seeds, models, ns.tiny, not ns.no_progress))
    print(f"report: {result / 'report.md'} and {result / 'report.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        print("vizoo: error: a command is required: run, compare, report, list or show (see vizoo --help)", file=sys.stderr)
        return 2
    try:
        if ns.command == "list":
            cmd_list()
            return 0
        if ns.command == "show":
            cmd_show(ns)
            return 0
        if ns.command == "compare":
            return cmd_compare(ns)
        if ns.command == "report":
            return cmd_report(ns)
        return cmd_run(ns)
    except OutputError as err:  # a read-only or full disk: 2 before the work, 1 during it
        print(f"vizoo: error: {err}", file=sys.stderr)
        return err.exit_code
    except distributed.ParallelError as err:  # another process of a data-parallel run died or went silent
        print(f"vizoo: run stopped: {err}", file=sys.stderr)
        return 1
    except VizooError as err:
        print(f"vizoo: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # any other file that cannot be read or written: one line, never a traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"vizoo: error: {where}{describe_os_error(err)}", file=sys.stderr)
        return 1  # input files are checked, with their own messages, before any work: this one came during it
    except NonFiniteLoss as err:  # training diverged: not bad input, but no traceback either
        print(f"vizoo: training stopped: {err}", file=sys.stderr)
        return 1
    except ImpossibleResult as err:  # e.g. an ELBO above the exact log p(x): stopped, never printed as a result
        print(f"vizoo: run stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vizoo: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as err:  # sizes within each limit whose combination does not fit
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if not isinstance(err, MemoryError) and "allocate" not in message:
            raise
        print(f"vizoo: error: out of memory ({message}): reduce the sizes (model_args, data.num_points or data.dim, "
              "svi.num_particles, svi.batch_size)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
