"""The result figure: two panels; per site federated solid and alone dashed; pooled red; centralised black."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedgrove.plotting import build_figure, plot_results


def _epochs() -> pd.DataFrame:
    rows = []
    for mode, site, base in (("federated", "a", 0.8), ("federated", "b", 0.8), ("alone", "a", 0.7),
                             ("alone", "b", 0.6), ("federated_pooled", "all", 0.8), ("centralised", "all", 0.85)):
        rows += [{"mode": mode, "site": site, "epoch": e, "accuracy_test": base + 0.01 * e,
                  "loss_test": 0.6 - 0.01 * e} for e in (1, 2, 3)]
    return pd.DataFrame(rows)


def test_plot_results_into_a_directory_writes_result_png(tmp_path: Path) -> None:
    path = plot_results(_epochs(), tmp_path / "run-1")
    assert path == tmp_path / "run-1" / "result.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_has_test_accuracy_and_loss_panels_with_one_styled_line_per_mode_and_site() -> None:
    figure = build_figure(_epochs())
    accuracy, loss = figure.axes
    assert (accuracy.get_title(), loss.get_title()) == ("Test accuracy", "Test loss")
    for axis, at_epoch_3 in ((accuracy, 0.83), (loss, 0.57)):
        lines = {line.get_label(): line for line in axis.get_lines()}
        assert sorted(lines) == ["alone:a", "alone:b", "centralised:all", "federated:a", "federated:b",
                                 "federated_pooled:all"]
        assert {lines[f"federated:{s}"].get_linestyle() for s in "ab"} == {"-"}
        assert {lines[f"alone:{s}"].get_linestyle() for s in "ab"} == {"--"}
        assert lines["federated:a"].get_color() == lines["alone:a"].get_color()
        assert (lines["centralised:all"].get_color(), lines["federated_pooled:all"].get_color()) == \
            ("black", "tab:red")
        assert list(lines["federated:a"].get_xdata()) == [1, 2, 3]
        assert lines["federated:a"].get_ydata()[-1] == pytest.approx(at_epoch_3)
    legend = [text.get_text() for text in loss.get_legend().get_texts()]
    assert legend == ["a", "b", "with federation", "alone", "federated, all sites' test records",
                      "centralised (one process held all the data)"]


def test_without_a_centralised_model_the_legend_does_not_promise_one() -> None:
    epochs = _epochs()
    legend = build_figure(epochs[epochs["mode"] != "centralised"]).axes[1].get_legend().get_texts()
    assert "centralised (one process held all the data)" not in [t.get_text() for t in legend]


def test_plot_results_names_the_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        plot_results(_epochs().drop(columns=["loss_test"]), tmp_path)
    assert str(caught.value) == (
        "expected columns ['mode', 'site', 'epoch', 'accuracy_test', 'loss_test'], missing ['loss_test'] "
        "(fix: build the frame with fedgrove.run_summary.epochs_frame)"
    )


def test_plot_results_refuses_an_unknown_mode(tmp_path: Path) -> None:
    epochs = _epochs().replace({"mode": {"alone": "solo"}})
    with pytest.raises(ValueError, match=r"^expected mode values in \['federated', 'federated_pooled', 'alone', "
                                         r"'centralised'\], got \['solo'\]$"):
        plot_results(epochs, tmp_path)
