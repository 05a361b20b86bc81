"""A leaf's own record of where it is in a run, so that a run that dies mid-way continues, not starts over.

Why this module exists: a federated run that dies at round 40 of 50 (the coordinator, a leaf, the machine)
should go on from the last aggregation every site completed. The aggregator keeps the aggregates; what only
the site has is its own state: the preprocessing it agreed, its privacy plan (with secure aggregation, its pair
secrets), the round it finished, the model it loaded, its optimizer's moments, its metrics so far and the
aggregation ids it has loaded. That is what is written here, at the site, after every round: one file per
round, renamed into place whole (a crash leaves the previous round's file or this one, never half), the newest
two kept. The site the coordinator names also keeps every round's aggregate, so that the run can keep its best
round's model once the sites' test losses are pooled. Files are readable by their owner only; once every round is done the pair secrets are dropped,
and the rest stays so that a coordinator that died after its sites finished can still collect their results.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedgrove.encoding import Preprocessing
from fedgrove.metrics import RoundMetrics
from fedgrove.model import OptimizerState
from fedgrove.privacy import PrivacyPlan, SecureRound
from fedgrove.spec import DpSpec
from fedgrove_common.atomic_files import replace_durably, staged

FORMAT = 1
KEEP_ROUNDS = 2
AGREEMENT_FILE = "agreement.json"
ROUND_PREFIX = "round-"
ROUND_MODEL_PREFIX = "model-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or cannot be read; the message says which and what to do."""


@dataclass(frozen=True)
class Agreement:
    """What a site settled with the others before round 1."""

    preprocessing: Preprocessing
    privacy: PrivacyPlan
    loaded: list[str]  # the preprocessing exchanges' aggregation ids, oldest first


@dataclass(frozen=True)
class RoundCheckpoint:
    """A site's state after it loaded round `round_number`'s aggregate."""

    round_number: int
    parameters: list[np.ndarray]  # the aggregate it loaded
    optimizer: OptimizerState | None  # after its fit of this round
    history: list[RoundMetrics]
    digests: list[str]
    round_seconds: list[float]
    loaded: list[str]  # every aggregation id it has loaded in this run, oldest first


def _write_bytes(path: Path, data: bytes) -> None:
    with staged(path.parent) as (temp, handle):
        handle.write(data)
    replace_durably(temp, path)


def _plan_json(plan: PrivacyPlan) -> dict[str, Any]:
    secure = plan.secure
    return {
        "rounds": plan.rounds,
        "secure": None if secure is None else {
            "site": secure.site, "roster": secure.roster, "run_id": secure.run_id,
            "secrets": {peer: secret.hex() for peer, secret in secure.secrets.items()},
        },
        "dp": None if plan.dp is None else plan.dp.model_dump(mode="json"),
        "sites": plan.sites,
        "epsilons": plan.epsilons,
        "stop_message": plan.stop_message,
    }


def _plan_from(data: dict[str, Any]) -> PrivacyPlan:
    secure = data["secure"]
    return PrivacyPlan(
        rounds=data["rounds"],
        secure=None if secure is None else SecureRound(
            site=secure["site"], roster=list(secure["roster"]), run_id=secure["run_id"],
            secrets={peer: bytes.fromhex(secret) for peer, secret in secure["secrets"].items()},
        ),
        dp=None if data["dp"] is None else DpSpec.model_validate(data["dp"]),
        sites=data["sites"],
        epsilons=list(data["epsilons"]),
        stop_message=data["stop_message"],
    )


class LeafCheckpoints:
    """The checkpoints of one site in one run, in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._encoded: list[tuple[RoundMetrics, str]] = []  # frozen metrics, each encoded to JSON once
        self._pruned_by_listing = False

    def clear(self) -> None:
        """Forget an earlier run's checkpoints under the same id (a fresh start)."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)

    def save_agreement(self, agreement: Agreement) -> None:
        document = {
            "format": FORMAT,
            "preprocessing": agreement.preprocessing.model_dump(mode="json"),
            "privacy": _plan_json(agreement.privacy),
            "loaded": agreement.loaded,
        }
        _write_bytes(self.folder / AGREEMENT_FILE, json.dumps(document).encode())

    def load_agreement(self) -> Agreement | None:
        path = self.folder / AGREEMENT_FILE
        if not path.is_file():
            return None
        try:
            document = json.loads(path.read_text())
            self._check_format(document, path)
            return Agreement(preprocessing=Preprocessing.model_validate(document["preprocessing"]),
                             privacy=_plan_from(document["privacy"]), loaded=list(document["loaded"]))
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({exc}) (fix: start the run again without "
                                  "--resume)") from exc

    def forget_secrets(self) -> None:
        """Drop the pair secrets once every round is done (they mask nothing more); the rest stays."""
        agreement = self.load_agreement()
        if agreement is not None and agreement.privacy.secure is not None and agreement.privacy.secure.secrets:
            secure = replace(agreement.privacy.secure, secrets={})
            self.save_agreement(replace(agreement, privacy=replace(agreement.privacy, secure=secure)))

    def save_round(self, checkpoint: RoundCheckpoint) -> None:
        state = {
            "format": FORMAT,
            "round": checkpoint.round_number,
            "step": None if checkpoint.optimizer is None else checkpoint.optimizer.step,
            "digests": checkpoint.digests,
            "round_seconds": checkpoint.round_seconds,
            "loaded": checkpoint.loaded,
        }
        # The history grows by a round each time: its rounds are encoded once, not every round's at every round.
        document = f'{json.dumps(state)[:-1]}, "history": {self._history_json(checkpoint.history)}}}'
        arrays: dict[str, np.ndarray] = {"state": np.array(document)}
        arrays |= {f"parameter_{i}": layer for i, layer in enumerate(checkpoint.parameters)}
        if checkpoint.optimizer is not None:
            arrays |= {f"first_{i}": moment.numpy() for i, moment in enumerate(checkpoint.optimizer.first)}
            arrays |= {f"second_{i}": moment.numpy() for i, moment in enumerate(checkpoint.optimizer.second)}
        path = self.folder / f"{ROUND_PREFIX}{checkpoint.round_number:06d}.npz"
        with staged(self.folder) as (temp, handle):
            np.savez(handle, **arrays)
        replace_durably(temp, path)
        if self._pruned_by_listing:
            # Rounds follow one another here: only the one that has just left the kept window is removed. The
            # folder also keeps a model a round, so listing it at every round would cost more the longer the run.
            (self.folder / f"{ROUND_PREFIX}{checkpoint.round_number - KEEP_ROUNDS:06d}.npz").unlink(missing_ok=True)
        else:  # the first save of this process: whatever an earlier one left behind goes too
            for old in self._round_files()[:-KEEP_ROUNDS]:
                old.unlink(missing_ok=True)
            self._pruned_by_listing = True

    def save_round_model(self, round_number: int, parameters: list[np.ndarray]) -> None:
        """Keep this round's aggregate for good (not pruned like the round checkpoints): the run's best round
        is known only once every site's test loss is pooled, after the last round."""
        path = self.folder / f"{ROUND_MODEL_PREFIX}{round_number:06d}.npz"
        with staged(self.folder) as (temp, handle):
            np.savez(handle, **{f"parameter_{i}": layer for i, layer in enumerate(parameters)})
        replace_durably(temp, path)

    def round_models(self) -> dict[int, list[np.ndarray]]:
        """Every kept round's aggregate, by round number."""
        if not self.folder.is_dir():
            return {}
        kept: dict[int, list[np.ndarray]] = {}
        for path in sorted(self.folder.glob(f"{ROUND_MODEL_PREFIX}*.npz")):
            try:
                with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
                    kept[int(path.stem.removeprefix(ROUND_MODEL_PREFIX))] = [
                        archive[f"parameter_{i}"] for i in range(len(archive.files))]
            except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise CheckpointError(f"checkpoint {path} cannot be read ({exc}) (fix: delete it; the run's best "
                                      "round's model is then not kept unless it is the last)") from exc
        return kept

    def _history_json(self, history: list[RoundMetrics]) -> str:
        """The history as a JSON array; a round's metrics already encoded (the same object) are not again."""
        kept = 0
        while kept < min(len(self._encoded), len(history)) and self._encoded[kept][0] is history[kept]:
            kept += 1
        self._encoded = self._encoded[:kept] + [(m, json.dumps(m.model_dump(mode="json"))) for m in history[kept:]]
        return f"[{','.join(text for _, text in self._encoded)}]"

    def latest_round(self) -> RoundCheckpoint | None:
        """The newest round checkpoint, or None when the site finished no round."""
        files = self._round_files()
        return self._read_round(files[-1]) if files else None

    def _round_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(ROUND_PREFIX) and p.suffix == ".npz")

    def _read_round(self, path: Path) -> RoundCheckpoint:
        import torch

        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
                state = json.loads(str(archive["state"]))
                self._check_format(state, path)
                count = sum(1 for name in archive.files if name.startswith("parameter_"))
                parameters = [archive[f"parameter_{i}"] for i in range(count)]
                optimizer = None
                if state["step"] is not None:
                    moments = sum(1 for name in archive.files if name.startswith("first_"))
                    optimizer = OptimizerState(
                        step=state["step"],
                        first=[torch.from_numpy(archive[f"first_{i}"]) for i in range(moments)],
                        second=[torch.from_numpy(archive[f"second_{i}"]) for i in range(moments)],
                    )
            return RoundCheckpoint(
                round_number=state["round"], parameters=parameters, optimizer=optimizer,
                history=[RoundMetrics.model_validate(m) for m in state["history"]], digests=list(state["digests"]),
                round_seconds=list(state["round_seconds"]), loaded=list(state["loaded"]),
            )
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({exc}) (fix: delete it to resume from the "
                                  "round before, or start the run again without --resume)") from exc

    @staticmethod
    def _check_format(document: dict[str, Any], path: Path) -> None:
        if document.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} has format {document.get('format')!r}; this fedgrove reads "
                                  f"format {FORMAT} (fix: resume with the fedgrove version that started the run)")
