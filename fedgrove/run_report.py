"""A finished run told in words and tables: the Prefect summary artifact and the CLI's final table.

Why this module exists: the same figures (per site federated vs alone, the federation pooled, centralised)
are shown in the Prefect UI and in the terminal; both read one summary (`fedgrove.run_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping


def metric(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


POOLED, CENTRALISED = "all sites (pooled)", "centralised"


def comparison_rows(summary: Mapping, *, with_loss: bool = True) -> list[list[str]]:
    """Rows of (site, records, federated acc/AUC[/loss], alone acc/AUC[/loss]) plus pooled and centralised."""
    def figures(values: Mapping | None) -> list[str]:
        values = values or {}
        shown = [metric(values.get("accuracy_test")), metric(values.get("auc_test"))]
        return shown + [metric(values.get("loss_test"), 4)] if with_loss else shown

    blank = ["", "", ""] if with_loss else ["", ""]
    rows = [[site, str(f["records"] + f["test_records"]), *figures(f["federated"]), *figures(f["alone"])]
            for site, f in summary["sites"].items()]
    total = str(sum(f["records"] + f["test_records"] for f in summary["sites"].values()))
    rows.append([POOLED, total, *figures(summary["federated_pooled"]), *blank])
    if summary["centralised"] is not None:
        rows.append([CENTRALISED, total, *figures(summary["centralised"]), *blank])
    return rows


COMPARISON_HEADER = ["site", "records", "federated acc", "federated AUC", "federated loss", "alone acc",
                     "alone AUC", "alone loss"]
TERMINAL_HEADER = ["site", "records", "fed acc", "fed AUC", "alone acc", "alone AUC"]


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
