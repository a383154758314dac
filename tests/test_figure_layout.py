"""Every figure of a small real study, checked with matplotlib's own extents: every text and
legend lies inside the canvas, no legend covers a plotted point; and the plotted data read back
from the axes are the study's numbers."""
from __future__ import annotations

import numpy as np
import pytest

import inference_emission
import lottery_ticket
import lottery_ticket_emissions
import lottery_ticket_performance
import post_training_inference
import post_training_inference_emissions
import data.report.plotting
from data.report.plotting import covers_data
from data.store import load_checkpoint

COMMON = ["--arch_type", "fc1", "--dataset", "digits"]
TRAIN = COMMON + ["--end_iter", "2", "--batch_size", "64", "--lr", "1e-3", "--seeds", "0", "1",
                  "--device", "cpu", "--no_progress"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """fc1 on digits: pp50x3 and the dense baseline, seeds 0 and 1, evaluated and CO2-tracked;
    every ticket replayed with dense and sparse kernels."""
    root = tmp_path_factory.mktemp("study")
    saves = ["--save_dir", str(root / "saves"), "--data_dir", str(root / "absent")]
    for shape in (["--prune_percent", "50", "--prune_iterations", "3"], ["--train_type", "regular"]):
        for co2 in ([], ["--co2_tracking_mode", "--country_iso_code", "FRA"]):
            assert lottery_ticket.main(TRAIN + saves + shape + co2) == 0
    assert post_training_inference.main(COMMON + ["--save_dir", str(root / "saves"), "--mode", "both",
                                                  "--passes", "2", "--country_iso_code", "FRA",
                                                  "--no_progress"]) == 0
    return root


def check_layout(fig) -> None:
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    undrawn = set()   # labels of ticks outside the axes' view, which matplotlib does not draw
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    undrawn |= {id(tick.label1), id(tick.label2)}
    for artist in [*fig.findobj(Text), *fig.findobj(Legend)]:
        if id(artist) in undrawn or not artist.get_visible() or (
                isinstance(artist, Text) and not artist.get_text().strip()):
            continue
        box = artist.get_window_extent(renderer)
        assert (box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1 and box.x1 <= canvas.x1 + 1
                and box.y1 <= canvas.y1 + 1), f"{artist!r} at {box} runs off the {canvas} canvas"
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            assert not covers_data(ax, legend), f"the legend of {ax.get_title()!r} covers data"


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved meanwhile, checked for layout before it is written."""
    from matplotlib.colors import to_hex

    drawn = {}
    save = data.report.plotting.FigureWriter.save

    def checked_save(self, fig, name):
        data.report.plotting.settle_legends(fig)   # what save does first
        check_layout(fig)
        drawn[name] = [(ax.get_title() or fig.get_suptitle(), [
            (line.get_label(), np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float),
             to_hex(line.get_color())) for line in ax.get_lines()]) for ax in fig.axes]
        return save(self, fig, name)

    monkeypatch.setattr(data.report.plotting.FigureWriter, "save", checked_save)
    return drawn


def test_every_figure_fits_its_canvas_and_no_legend_covers_data(study, figures, tmp_path):
    plots = ["--save_dir", str(study / "saves"), "--plots_dir", str(tmp_path)]
    for script in (lottery_ticket_performance, lottery_ticket_emissions, post_training_inference_emissions,
                   inference_emission):
        assert script.main(COMMON + plots) == 0
    assert len(figures) >= 40
    assert any(name.startswith("inference_cpu_") for name in figures)
    assert "lottery_ticket_test_accuracy_vs_weights_left" in figures


def test_the_accuracy_figure_draws_the_study_means(study, figures, tmp_path):
    assert lottery_ticket_performance.main(COMMON + ["--save_dir", str(study / "saves"),
                                                     "--plots_dir", str(tmp_path)]) == 0
    [(title, lines)] = figures["lottery_ticket_test_accuracy_vs_weights_left"]
    title = title.replace("\n", " ")
    assert "mean ± 1 SD over seeds" in title and "2 seeds each" in title
    folder = study / "saves" / "fc1" / "digits"
    cycles = [load_checkpoint(p)["cycles"] for p in sorted(folder.glob("pp50x3_seed*_co2False*.pt"))]
    expected = np.mean([[c["test_accuracy_at_best"] for c in run] for run in cycles], axis=0)
    left = np.mean([[c["percent_remaining"] for c in run] for run in cycles], axis=0)
    # The ticket's line, then its lower and upper error-bar caps (the baseline is a 2-point line).
    ticket = [line for line in lines if len(line[1]) == 3]
    assert len(ticket) == 3 and np.all(ticket[1][2] <= ticket[0][2]) and np.all(ticket[0][2] <= ticket[2][2])
    np.testing.assert_allclose(ticket[0][2], expected, rtol=1e-6)
    np.testing.assert_allclose(ticket[0][1], left, rtol=1e-6)
    assert left[0] == pytest.approx(100.0) and left[-1] == pytest.approx(25.0, abs=0.5)


def test_one_tickets_dense_and_sparse_lines_differ_in_colour(study, figures, tmp_path):
    assert post_training_inference_emissions.main(COMMON + ["--save_dir", str(study / "saves"),
                                                            "--plots_dir", str(tmp_path)]) == 0
    [(title, lines)] = figures["inference_cpu_total_energy_vs_inferences"]
    title = title.replace("\n", " ")
    colours = {label: colour for label, _, _, colour in lines if not label.startswith("_")}
    ticket = "50% pruned twice, 25% of weights left"
    assert colours[f"{ticket}, dense kernels"] != colours[f"{ticket}, sparse kernels"]
    assert colours["dense baseline, dense kernels"] != colours["dense baseline, sparse kernels"]
    assert "2 seeds each" in title   # said once, not in every legend entry
