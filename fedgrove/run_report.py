"""A finished run told in words and tables: the Prefect summary artifact and the CLI's final table.

Why this module exists: the same figures (per site federated vs alone, the federation pooled, centralised)
are shown in the Prefect UI and in the terminal; both read one summary (`fedgrove.run_summary`). The columns
are the task's headline metrics (accuracy and AUC, accuracy and macro-F1, RMSE and R²), then the loss.
"""

from __future__ import annotations

from collections.abc import Mapping

POOLED, CENTRALISED = "all sites (pooled)", "centralised"
SHORT = {"accuracy": "acc", "auc": "AUC", "macro_f1": "F1", "rmse": "RMSE", "r2": "R²", "mae": "MAE",
         "loss": "loss"}
DISPLAY = {"accuracy": "accuracy", "auc": "AUC", "macro_f1": "macro-F1", "rmse": "RMSE", "r2": "R²", "mae": "MAE",
           "loss": "loss"}


def metric(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def shown_metrics(summary: Mapping, *, with_loss: bool) -> list[str]:
    return [*summary["headline"], *(["loss"] if with_loss else [])]


def comparison_header(summary: Mapping, *, with_loss: bool = True, short: bool = False) -> list[str]:
    """site, records, then each shown metric federated, then alone."""
    names = shown_metrics(summary, with_loss=with_loss)
    label = (lambda n: SHORT[n]) if short else (lambda n: n)
    federated = "fed" if short else "federated"
    return ["site", "records", *(f"{federated} {label(n)}" for n in names), *(f"alone {label(n)}" for n in names)]


def comparison_rows(summary: Mapping, *, with_loss: bool = True) -> list[list[str]]:
    """Per site: records, the shown metrics federated and alone; then the pooled federation and centralised."""
    names = shown_metrics(summary, with_loss=with_loss)

    def figures(values: Mapping | None) -> list[str]:
        values = values or {}
        return [metric(values.get(f"{name}_test"), 4 if name == "loss" else 3) for name in names]

    blank = [""] * len(names)
    rows = [[site, str(f["records"] + f["test_records"]), *figures(f["federated"]), *figures(f["alone"])]
            for site, f in summary["sites"].items()]
    total = str(sum(f["records"] + f["test_records"] for f in summary["sites"].values()))
    rows.append([POOLED, total, *figures(summary["federated_pooled"]), *blank])
    if summary["centralised"] is not None:
        rows.append([CENTRALISED, total, *figures(summary["centralised"]), *blank])
    return rows


def privacy_line(summary: Mapping) -> str | None:
    """What the run protected and what it spent, in one sentence; None for a run without privacy settings."""
    privacy = summary.get("privacy") or {}
    parts = []
    if privacy.get("secure_aggregation"):
        parts.append("secure aggregation (the server saw only masked uploads)")
    dp = privacy.get("dp")
    if dp:
        parts.append(f"{dp['level']}-level differential privacy, ε = {privacy['epsilon']:.3g} at δ = {dp['delta']:g} "
                     f"after {privacy['rounds_run']} rounds")
    if not parts:
        return None
    return "privacy: " + "; ".join(parts) + (f"; {privacy['message']}" if privacy.get("message") else "")


def run_markdown(summary: Mapping, uris: Mapping[str, str]) -> str:
    header = comparison_header(summary)
    lines = [
        f"# Federated training run `{summary['run_id']}`",
        "",
        f"{len(summary['sites'])} sites, {summary['rounds']} rounds, {summary['mode']} mode, task "
        f"`{summary['task']}` on `{summary['target']}`; model inputs: {', '.join(summary['features'])}.",
        "",
        "Test metrics after the last round:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in comparison_rows(summary)],
        "",
        f"Identical models at every site after every round: **{summary['identical_models']}**."
        + (f" Wall time: {summary['wall_s']:.1f} s." if "wall_s" in summary else ""),
        *(["", privacy_line(summary)] if privacy_line(summary) else []),
        "",
        "Outputs:",
        *[f"- `{name}`: {uri}" for name, uri in uris.items()],
    ]
    if summary.get("failed_sites"):
        lines += ["", "Failed sites:", *[f"- {site}: {why}" for site, why in summary["failed_sites"].items()]]
    return "\n".join(lines)
