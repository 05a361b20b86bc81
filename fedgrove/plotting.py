"""A run's one picture: does federation beat each site alone, and how close is it to centralised?

Why this module exists: the run's result is judged by eye from ``result.png`` (test accuracy and test loss
per epoch). It draws on a bare ``matplotlib.figure.Figure`` (Agg canvas), so it needs no display and does
not switch pyplot's global backend for the rest of the process.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

RESULT_FILE = "result.png"
BASE_COLUMNS = ("mode", "site", "epoch")
MODES = ("federated", "federated_pooled", "alone", "centralised")
_STYLE = {"federated": "-", "alone": "--"}
_WHOLE = {"federated_pooled": ("tab:red", "federated, all sites' test records"),
          "centralised": ("black", "centralised (one process held all the data)")}


def plot_results(epochs: pd.DataFrame, path: str | Path, *, headline: str = "accuracy") -> Path:
    """Write the two-panel figure to ``path`` (a ``.png`` file, or a directory that gets ``result.png``)."""
    figure = build_figure(epochs, headline=headline)
    path = Path(path)
    target = path if path.suffix == ".png" else path / RESULT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    return target


def build_figure(epochs: pd.DataFrame, *, headline: str = "accuracy") -> Figure:
    """Two panels (test accuracy, test loss): per site federated solid and alone dashed; the federation pooled
    over every site's test records in bold red; centralised in bold black where it was trained."""
    required = [*BASE_COLUMNS, f"{headline}_test", "loss_test"]
    missing = [c for c in required if c not in epochs.columns]
    if missing:
        raise ValueError(f"expected columns {required}, missing {missing} "
                         "(fix: build the frame with fedgrove.run_summary.epochs_frame)")
    unknown = sorted(set(epochs["mode"]) - set(MODES))
    if unknown:
        raise ValueError(f"expected mode values in {list(MODES)}, got {unknown}")
    if epochs.empty:
        raise ValueError("expected at least one row of epoch metrics, got an empty frame")
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    panels = figure.subplots(1, 2)
    sites = list(dict.fromkeys(epochs.loc[~epochs["mode"].isin(list(_WHOLE)), "site"]))
    colours = {site: f"C{i % 10}" for i, site in enumerate(sites)}
    titles = {"accuracy": "Test accuracy", "rmse": "Test RMSE", "r2": "Test R²", "auc": "Test AUC",
              "macro_f1": "Test macro-F1"}
    for axis, column, title in zip(panels, (f"{headline}_test", "loss_test"), (titles[headline], "Test loss"),
                                   strict=True):
        for (mode, site), rows in epochs.sort_values("epoch").groupby(["mode", "site"], sort=True):
            if mode in _WHOLE:
                axis.plot(rows["epoch"], rows[column], color=_WHOLE[mode][0], linewidth=2.2, label=f"{mode}:{site}")
            else:
                axis.plot(rows["epoch"], rows[column], color=colours[site], linestyle=_STYLE[mode], alpha=0.7,
                          linewidth=1, label=f"{mode}:{site}")
        axis.set_title(title)
        axis.set_xlabel("epoch (round)")
        axis.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[s], label=s) for s in sites]
    handles += [Line2D([], [], color="grey", linestyle="-", label="with federation"),
                Line2D([], [], color="grey", linestyle="--", label="alone")]
    handles += [Line2D([], [], color=colour, linewidth=2.2, label=text) for mode, (colour, text) in _WHOLE.items()
                if mode in set(epochs["mode"])]
    panels[1].legend(handles=handles, fontsize="small")
    return figure
