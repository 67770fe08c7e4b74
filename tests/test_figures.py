"""The report's figures and tables, checked where a check is possible (issue 20), and progress bars only on a terminal.

Figures are built on tiny draws and tiny runs, drawn with the Agg renderer, and checked through the renderer's
extents: titles that do not overlap, a legend outside the data, integer tick values, a KL axis that never goes below
zero, E-step and M-step markers at different places.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from matplotlib.transforms import Bbox
from vizoo.experiments import report, seeds
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.inference_data import forest_figure
from vizoo.experiments.overview import _overview_row
from vizoo.experiments.plots import correlation_figure
from vizoo.experiments.registry import MODELS
from vizoo.experiments.tables import markdown_table
from vizoo.experiments.train import show_bar, train_svi
from vizoo.models.datasets import DataOptions


@pytest.fixture
def captured(monkeypatch):
    """The figures that ``report.save_png`` is handed, drawn, before they are written and closed."""
    figs = []
    save = report.save_png

    def keep(fig, path):
        fig.canvas.draw()
        figs.append((Path(path).name, fig, [ax.get_ylim() for ax in fig.axes], [ax.get_yscale() for ax in fig.axes]))
        save(fig, path)

    monkeypatch.setattr(report, "save_png", keep)
    return figs


def _bits(seed: int, s: int = 200, points: int = 2, k: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(s, points, k, generator=gen) < 0.4).double()


def _no_overlap(texts) -> None:
    boxes = [t.get_window_extent() for t in texts if t.get_text()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


# --------------------------------------------------------------------------- progress bars


def test_a_training_with_progress_on_writes_no_bar_when_stderr_is_not_a_terminal(capsys):
    spec = MODELS["gmm"]
    args = spec.args_type()
    x = spec.load(DataOptions(name="synthetic", num_points=20), args, 0).x
    init = spec.init_params(x, args, 0)
    g = spec.guides["mean_field"]
    guide = g.build(x, init)
    model = spec.learnable(init, args)
    train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", steps=30, lr=0.05), seed=0, progress=True, desc="gmm")
    out, err = capsys.readouterr()
    assert "\r" not in err and "\r" not in out and "it/s" not in err, err[:200]


def test_bars_are_shown_on_a_terminal_only():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert show_bar(True, Tty()) and not show_bar(False, Tty())
    assert not show_bar(True, io.StringIO())  # a file or a pipe
    closed = io.StringIO()
    closed.close()
    assert not show_bar(True, closed)


# --------------------------------------------------------------------------- correlation.png


def test_the_correlation_figure_has_cause_indices_a_marked_diagonal_and_separate_titles():
    draws = {"exact | SVI mean_field": {"d": _bits(0)}, "SVI mean_field": {"d": _bits(1)},
             "exact | SVI amortised": {"d": _bits(2)}, "SVI amortised": {"d": _bits(3)}}
    fig = correlation_figure(draws, [103, 7])
    fig.canvas.draw()
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 4
    _no_overlap([ax.title for ax in images] + [fig._suptitle])
    for ax in images:
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert list(ticks) == [0, 1, 2]  # the latent bits' indices, not -0.5 ... 2.5
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
        assert "index" in ax.get_xlabel() and "index" in ax.get_ylabel()
        diagonal = {(t.get_position(), t.get_text()) for t in ax.texts if t.get_position()[0] == t.get_position()[1]}
        assert diagonal == {((i, i), "1") for i in range(3)}  # the diagonal is marked, not blank
        assert not any(t.get_text().startswith("-0.00") for t in ax.texts)
    assert correlation_figure({"SVI q": {"z": torch.randn(50, 2, 3)}}, [0, 1]) is None


# --------------------------------------------------------------------------- forest.png


def test_the_forest_figure_shows_probabilities_of_discrete_latents_and_keeps_its_legend_off_the_data():
    draws = {"SVI mean_field": {"d": _bits(0)}, "exact | SVI mean_field": {"d": _bits(1)}}
    fig = forest_figure(draws, [103, 7])
    fig.canvas.draw()
    (ax,) = fig.axes
    assert "probability" in ax.get_xlabel()
    assert -0.1 <= ax.get_xlim()[0] and ax.get_xlim()[1] <= 1.1
    means = sorted(float(v) for m in draws.values() for v in m["d"][:, 0].mean(0))
    shown = sorted(float(x) for c in ax.collections for x, _ in c.get_offsets())
    assert shown == pytest.approx(means)  # one dot per bit and method: P(bit = 1) at the first point
    assert [t.get_text() for t in ax.get_yticklabels()] == ["d[0]", "d[1]", "d[2]"]
    (legend,) = fig.legends
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())  # outside the axes
    assert Bbox.from_bounds(0, 0, *fig.canvas.get_width_height()).contains(*legend.get_window_extent().p0)


def test_one_hot_categories_are_labelled_by_category():
    z = torch.nn.functional.one_hot(torch.arange(60) % 3, 3).double()[:, None, :]
    fig = forest_figure({"SVI mean_field": {"z": z}, "exact | SVI mean_field": {"z": z}}, [5])
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z = 0", "z = 1", "z = 2"]


# --------------------------------------------------------------------------- seed figures


def test_the_gap_split_figure_never_goes_below_zero(captured, tmp_path):
    rows = [{"method": "SVI mean_field", "approximation_gap": 0.05, "amortisation_gap": 0.1},
            {"method": "SVI structured", "approximation_gap": 0.01, "amortisation_gap": 0.02}]
    per_seed = [[0.001, 0.299], [0.0, 0.06]]  # mean - sd < 0 for both
    seeds.gap_split_figure(rows, per_seed, tmp_path / "fhmm_structured.png", "gap split")
    (name, fig, ylims, _), = captured
    assert ylims[0][0] == 0 and ylims[0][1] > 0.299
    ax = fig.axes[0]
    lows = [seg[:, 1].min() for c in ax.collections for seg in c.get_segments()]
    lows += [min(line.get_ydata()) for line in ax.lines]
    assert lows and min(lows) >= 0
    assert "≥ 0" in ax.get_ylabel() and (tmp_path / "fhmm_structured.png").is_file()


def test_the_fhmm_seed_experiment_draws_its_range_within_the_support(captured, tmp_path):
    res = seeds.run(seeds.load(seeds.bundled()["fhmm_structured"]), tmp_path, tiny=True, log=lambda *a: None)
    fig_ylims = {name: ylims for name, _, ylims, _ in captured}
    assert fig_ylims["fhmm_structured.png"][0][0] == 0
    assert all(r["total_gap"] >= 0 for r in res["rows"])


def test_em_as_vi_separates_the_e_and_m_steps(captured, tmp_path):
    res = seeds.run(seeds.load(seeds.bundled()["em_as_vi"]), tmp_path)
    (name, fig, _, scales), = [c for c in captured if c[0] == "em_as_vi.png"]
    top, low = fig.axes
    marks = {line.get_label(): line for line in top.lines}
    e = next(v for k, v in marks.items() if k.startswith("ELBO after the E-step"))
    m = next(v for k, v in marks.items() if k.startswith("ELBO after the M-step"))
    assert set(e.get_xdata()).isdisjoint(m.get_xdata())  # E at t, M at t + 1/2: never on top of each other
    assert list(m.get_xdata()) == [t + 0.5 for t in e.get_xdata()]
    assert scales[1] == "log"  # the gaps the top panel cannot show, on a log axis
    rise = next(line for line in low.lines if line.get_label().startswith("M-step's rise"))
    assert len(rise.get_ydata()) == len(res["rows"]) and min(rise.get_ydata()) > 0
    _no_overlap([t for t in top.texts] + top.get_legend().get_texts())


# --------------------------------------------------------------------------- tables


def test_the_overview_prints_no_negative_zero_and_left_aligns_its_prose():
    class Result:
        title = "gmm on faithful"
        wall_time_s = 1.0
        summary = [{"kind": "guide", "method": "SVI marginal", "elbo": -1.2, "total_gap": -1e-7,
                    "approximation_gap": -0.0, "amortisation_gap": 3e-6}]

    row = _overview_row("gmm", Result())
    assert "-0.0000" not in row and row.count("0.0000") == 3


def test_a_table_without_an_exact_reference_drops_its_empty_column_and_names_iwae():
    summary = [{"method": "SVI amortised", "kind": "guide", "estimator": "Trace_ELBO", "elbo": -90.0, "log_p": -88.0,
                "log_p_se": 0.1, "total_gap": 2.0, "approximation_gap": None, "amortisation_gap": None, "wall_time_s": 3.0}]
    table = markdown_table(summary)
    head = table.splitlines()[0]
    assert "IWAE" in head and "approximation gap" not in head and "amortisation gap" not in head
    assert "–" not in table
    metrics = {"exact": None, "guides": {"amortised": {
        "elbo": "Trace_ELBO", "final_elbo_per_point": -90.0, "final_elbo_se": 0.2, "log_likelihood_per_point": -88.0,
        "log_likelihood_se": 0.1, "log_likelihood_method": "IWAE, k = 50 (a lower bound in expectation)",
        "kl_per_point": None, "steps": 10, "interrupted": False, "wall_time_s": 1.0}}}
    table = report.comparison_table(metrics)
    head = table.splitlines()[0]
    assert "EM optimum" not in head and "IWAE estimate of log p(x)" in head
    widths = {len(re.split(r"(?<!\\)\|", line.strip()[1:-1])) for line in table.splitlines()}
    assert len(widths) == 1  # every row (and the alignment row) as wide as the header, "p(z\\|x)" one cell
