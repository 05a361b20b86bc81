"""A finished run told in words and tables: the Prefect summary artifact and the CLI's final table.

Why this module exists: the same figures (per site federated vs alone, the federation pooled, centralised)
are shown in the Prefect UI and in the terminal; both read one summary (`fedgrove.run_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping


def metric(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def comparison_rows(summary: Mapping) -> list[list[str]]:
    """Rows of (site, records, federated acc/auc/loss, alone acc/auc/loss) plus pooled and centralised."""
    rows = []
    for site, figures in summary["sites"].items():
        fed, alone = figures["federated"], figures["alone"] or {}
        rows.append([site, str(figures["records"] + figures["test_records"]),
                     metric(fed["accuracy_test"]), metric(fed["auc_test"]), metric(fed["loss_test"], 4),
                     metric(alone.get("accuracy_test")), metric(alone.get("auc_test")),
                     metric(alone.get("loss_test"), 4)])
    total = sum(f["records"] + f["test_records"] for f in summary["sites"].values())
    pooled = summary["federated_pooled"]
    rows.append(["all sites (pooled)", str(total), metric(pooled["accuracy_test"]), metric(pooled["auc_test"]),
                 metric(pooled["loss_test"], 4), "", "", ""])
    central = summary["centralised"]
    if central is not None:
        rows.append(["centralised", str(total), metric(central["accuracy_test"]), metric(central["auc_test"]),
                     metric(central["loss_test"], 4), "", "", ""])
    return rows


COMPARISON_HEADER = ["site", "records", "federated acc", "federated auc", "federated loss", "alone acc",
                     "alone auc", "alone loss"]


def run_markdown(summary: Mapping, uris: Mapping[str, str]) -> str:
    lines = [
        f"# Federated training run `{summary['run_id']}`",
        "",
        f"{len(summary['sites'])} sites, {summary['rounds']} rounds, {summary['mode']} mode, task "
        f"`{summary['task']}` on `{summary['target']}`; model inputs: {', '.join(summary['features'])}.",
        "",
        "Test metrics after the last round:",
        "",
        "| " + " | ".join(COMPARISON_HEADER) + " |",
        "|" + "---|" * len(COMPARISON_HEADER),
        *["| " + " | ".join(row) + " |" for row in comparison_rows(summary)],
        "",
        f"Identical models at every site after every round: **{summary['identical_models']}**."
        + (f" Wall time: {summary['wall_s']:.1f} s." if "wall_s" in summary else ""),
        "",
        "Outputs:",
        *[f"- `{name}`: {uri}" for name, uri in uris.items()],
    ]
    if summary.get("failed_sites"):
        lines += ["", "Failed sites:", *[f"- {site}: {why}" for site, why in summary["failed_sites"].items()]]
    return "\n".join(lines)
