"""Prefect events about the model registry, for automations to act on (`deployments/automations.yaml`).

Why this module exists: a run that finishes but leaves production as it was is not a failure Prefect can see
from the run's state; the event `fedgrove.model.not-promoted` on the resource `fedgrove.run.<run-id>` lets an
automation notify someone, with the reason in its payload. The reason names metrics and run ids, never a record.
"""

from __future__ import annotations

from prefect.events import emit_event

NOT_PROMOTED = "fedgrove.model.not-promoted"


def announce_not_promoted(run_id: str, reason: str) -> None:
    emit_event(event=NOT_PROMOTED,
               resource={"prefect.resource.id": f"fedgrove.run.{run_id}", "prefect.resource.name": run_id},
               payload={"reason": reason})
