"""The safe-promotion rule: a pure function deciding whether a finished run may replace production's model.

Why this module exists: a weekly retrain must not silently replace a better model with a worse one. The
rule compares one pooled test metric, the summary's headline for the task (accuracy for binary and
multiclass, higher is better; RMSE for regression, lower is better), and allows a regression of at most
`promotion.max_regression` in that metric's own units. It does no I/O; the registry applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The metric each task is judged by, and whether higher is better.
PRIMARY = {"binary": ("accuracy_test", True), "multiclass": ("accuracy_test", True),
           "regression": ("rmse_test", False)}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def primary_metric(task: str) -> tuple[str, bool]:
    """The pooled test metric a run of `task` is judged by, and whether higher is better."""
    try:
        return PRIMARY[task]
    except KeyError:
        raise ValueError(f"expected a task of {sorted(PRIMARY)}, got {task!r}") from None


def regression_of(candidate: float, production: float, *, higher_is_better: bool) -> float:
    """How much worse the candidate is than production, in the metric's units (negative: better)."""
    return production - candidate if higher_is_better else candidate - production


def decide(*, task: str, candidate: dict[str, float | None], production: dict[str, float | None] | None,
           production_run: str | None, max_regression: float) -> Decision:
    """Whether a run with pooled test metrics `candidate` may replace `production_run`'s (`production`)."""
    name, higher = primary_metric(task)
    value = candidate.get(name)
    if value is None:
        return Decision(False, f"its pooled {name} is undefined, so it cannot be compared")
    if production is None or production_run is None:
        return Decision(True, f"there is no production model yet; its pooled {name} is {value:.4f}")
    current = production.get(name)
    if current is None:
        return Decision(True, f"production run {production_run} has no pooled {name}; this run's is {value:.4f}")
    worse = regression_of(value, current, higher_is_better=higher)
    comparison = (f"pooled {name} {value:.4f} against production run {production_run}'s {current:.4f} "
                  f"({'higher' if higher else 'lower'} is better)")
    if worse > max_regression + 1e-12:
        return Decision(False, f"{comparison} is worse by {worse:.4f}, more than promotion.max_regression "
                               f"{max_regression:g}")
    return Decision(True, f"{comparison} is within promotion.max_regression {max_regression:g}")
