"""`fedgrove alerts install`: the project's Prefect automations, pointed at the user's notification block.

Why this module exists: Prefect sends alerts through automations, and an automation file names its
notification block by id. The file `deployments/automations.yaml` says what to alert on (a coordinator run
that failed, a model that was not promoted); this command puts in the id of the block the user named and
creates the automations, replacing earlier ones of the same names so that it can be run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fedgrove_cli.console import console, fail

PLACEHOLDER = "NOTIFICATION_BLOCK"
DEFAULT_FILE = Path(__file__).resolve().parent.parent / "deployments" / "automations.yaml"

app = typer.Typer(help="Prefect automations that alert on failed runs and models not promoted.",
                  no_args_is_help=True)


def automations_with_block(document: dict[str, Any], block_id: str) -> list[dict[str, Any]]:
    """The file's automations with the block's id wherever the placeholder stands."""
    automations = document.get("automations") if isinstance(document, dict) else None
    if not isinstance(automations, list) or not automations:
        raise ValueError("expected a list under `automations:`, got none")
    for automation in automations:
        for action in automation.get("actions", []):
            if action.get("block_document_id") == PLACEHOLDER:
                action["block_document_id"] = block_id
    return automations


@app.command()
def install(
    block: Annotated[str, typer.Option(help="The notification block, as <block-type>/<block-name>, e.g. "
                                       "slack-webhook/fedgrove-alerts.")],
    file: Annotated[Path, typer.Option(help="The automations file.")] = DEFAULT_FILE,
) -> None:
    """Create (or replace) the automations of FILE, sending through BLOCK."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    block_type, _, name = block.partition("/")
    if not block_type or not name:
        fail(f"expected --block like slack-webhook/fedgrove-alerts, got {block!r} (fix: <block-type>/<block-name>, "
             "as `prefect block ls` shows it)")
    try:
        document = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"the automations file {file} cannot be read ({exc})")
    with get_client(sync_client=True) as client:
        try:
            found = client.read_block_document_by_name(name, block_type_slug=block_type)
        except ObjectNotFound:
            fail(f"there is no {block_type} block named {name!r} on the Prefect API (fix: create it first, e.g. "
                 f"`prefect block create {block_type}`, then run this again)")
        try:
            automations = [AutomationCore.model_validate(a)
                           for a in automations_with_block(document, str(found.id))]
        except ValueError as exc:
            fail(f"the automations file {file} is not valid: {exc}")
        for automation in automations:
            for earlier in client.read_automations_by_name(automation.name):
                client.delete_automation(earlier.id)
            client.create_automation(automation)
            console.print(f"automation [bold]{automation.name}[/bold]: notifies through {block}")
