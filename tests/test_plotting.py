"""The result figure: two panels, federated solid, alone dashed, centralised black, written without a display."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedgrove.plotting import build_figure, plot_results
from fedgrove.simulation import EpochMetrics, metrics_frame


def _epochs() -> pd.DataFrame:
    def history(base: float) -> list[EpochMetrics]:
        return [EpochMetrics(e, base, 0.5, base + 0.01 * e, 0.6 - 0.01 * e) for e in (1, 2, 3)]

    return pd.concat([
        metrics_frame("federated", {"org-1": history(0.8), "org-2": history(0.8)}),
        metrics_frame("local_only", {"org-1": history(0.7), "org-2": history(0.6)}),
        metrics_frame("centralised", {"all": history(0.85)}),
    ], ignore_index=True)


def test_plot_results_into_a_directory_writes_result_png(tmp_path: Path) -> None:
    path = plot_results(_epochs(), tmp_path / "run-1")
    assert path == tmp_path / "run-1" / "result.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_results_to_a_png_path_writes_exactly_there(tmp_path: Path) -> None:
    assert plot_results(_epochs(), tmp_path / "figure.png") == tmp_path / "figure.png"
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_figure_has_test_accuracy_and_loss_panels_with_one_styled_line_per_mode_and_organisation() -> None:
    figure = build_figure(_epochs())
    accuracy, loss = figure.axes
    assert (accuracy.get_title(), loss.get_title()) == ("Test accuracy", "Test loss")
    for axis, column_at_epoch_3 in ((accuracy, 0.83), (loss, 0.57)):
        lines = {line.get_label(): line for line in axis.get_lines()}
        assert sorted(lines) == ["centralised:all", "federated:org-1", "federated:org-2",
                                 "local_only:org-1", "local_only:org-2"]
        assert {lines[f"federated:{o}"].get_linestyle() for o in ("org-1", "org-2")} == {"-"}
        assert {lines[f"local_only:{o}"].get_linestyle() for o in ("org-1", "org-2")} == {"--"}
        assert lines["federated:org-1"].get_color() == lines["local_only:org-1"].get_color()
        assert lines["centralised:all"].get_color() == "black"
        assert list(lines["federated:org-1"].get_xdata()) == [1, 2, 3]
        assert lines["federated:org-1"].get_ydata()[-1] == pytest.approx(column_at_epoch_3)
    legend = [text.get_text() for text in loss.get_legend().get_texts()]
    assert legend == ["org-1", "org-2", "with federation", "alone", "centralised"]


def test_plot_results_names_the_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        plot_results(_epochs().drop(columns=["loss_test"]), tmp_path)
    assert str(caught.value) == (
        "expected columns ['mode', 'organisation', 'epoch', 'accuracy', 'loss', 'accuracy_test', 'loss_test'], "
        "missing ['loss_test'] (fix: build the frame with fedgrove.simulation.metrics_frame)"
    )


def test_plot_results_refuses_an_unknown_mode(tmp_path: Path) -> None:
    epochs = _epochs().replace({"mode": {"local_only": "solo"}})
    with pytest.raises(ValueError, match=r"^expected mode values in \['federated', 'local_only', 'centralised'\], "
                                         r"got \['solo'\]$"):
        plot_results(epochs, tmp_path)
