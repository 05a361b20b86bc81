"""A site's checkpoints and a run's record: what a resumed run reads back, and the exact refusals."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrove.checkpoints import Agreement, CheckpointError, LeafCheckpoints, RoundCheckpoint
from fedgrove.demo import DemoOptions, demo_spec
from fedgrove.encoding import EncodedColumn, Preprocessing
from fedgrove.metrics import RoundMetrics, SplitMetrics
from fedgrove.model import OptimizerState
from fedgrove.privacy import PrivacyPlan, SecureRound
from fedgrove.run_record import (
    ResumeRefused,
    RunRecord,
    read_run_record,
    refuse_changed_demo,
    refuse_changed_mode,
    refuse_changed_spec,
    write_run_record,
)


def _round(number: int) -> RoundCheckpoint:
    generator = np.random.default_rng(number)
    return RoundCheckpoint(
        round_number=number,
        parameters=[generator.normal(size=(1, 4)).astype(np.float32), generator.normal(size=1).astype(np.float32)],
        optimizer=OptimizerState(step=number * 7, first=[torch.full((1, 4), 0.5 * number), torch.zeros(1)],
                                 second=[torch.full((1, 4), 0.25), torch.ones(1)]),
        history=[RoundMetrics(epoch=r, train=SplitMetrics(records=40, values={"loss": 1.0 / r}),
                              test=SplitMetrics(records=10, values={"loss": 2.0 / r})) for r in range(1, number + 1)],
        digests=[f"digest-{r}" for r in range(1, number + 1)],
        round_seconds=[0.1] * number,
        loaded=[f"aggregation-{r}" for r in range(1, number + 1)],
    )


def test_a_round_checkpoint_reads_back_exactly_and_only_the_newest_two_are_kept(tmp_path: Path) -> None:
    checkpoints = LeafCheckpoints(tmp_path / "checkpoints")
    assert checkpoints.latest_round() is None
    for number in (1, 2, 3):
        checkpoints.save_round(_round(number))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-000002.npz", "round-000003.npz"]
    got, expected = checkpoints.latest_round(), _round(3)
    assert got is not None and got.round_number == 3
    for a, b in zip(got.parameters, expected.parameters, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert got.optimizer is not None and expected.optimizer is not None
    assert got.optimizer.step == 21
    for a, b in zip(got.optimizer.first + got.optimizer.second, expected.optimizer.first + expected.optimizer.second,
                    strict=True):
        assert torch.equal(a, b)
    assert got.history == expected.history and got.digests == expected.digests and got.loaded == expected.loaded
    mode = stat.S_IMODE((tmp_path / "checkpoints" / "round-000003.npz").stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)


def test_a_later_process_prunes_what_an_earlier_one_left_and_then_keeps_the_newest_two(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    first = LeafCheckpoints(folder)
    for number in (1, 2, 3):
        first.save_round(_round(number))
    for number in (1, 2):  # as if the process had died between a round's save and its pruning
        (folder / f"round-00000{number}.npz").write_bytes((folder / "round-000003.npz").read_bytes())
    resumed = LeafCheckpoints(folder)  # a resumed leaf: a new process
    resumed.save_round(_round(4))
    assert sorted(p.name for p in folder.iterdir()) == ["round-000003.npz", "round-000004.npz"]
    for number in (5, 6, 7):
        resumed.save_round(_round(number))
        resumed.save_round_model(number, _round(number).parameters)
    assert sorted(p.name for p in folder.glob("round-*.npz")) == ["round-000006.npz", "round-000007.npz"]
    assert sorted(resumed.round_models()) == [5, 6, 7]


def test_a_growing_history_is_saved_whole_and_a_replaced_one_as_it_is_now(tmp_path: Path) -> None:
    """The leaf appends one round's metrics to the same list every round (each encoded once); a history that is
    replaced (a resumed leaf's) is saved as the new list holds it, not as the earlier one was."""
    def metrics(epoch: int, loss: float) -> RoundMetrics:
        return RoundMetrics(epoch=epoch, train=SplitMetrics(records=40, values={"loss": loss}),
                            test=SplitMetrics(records=10, values={"loss": loss}))

    checkpoints = LeafCheckpoints(tmp_path / "checkpoints")
    history: list[RoundMetrics] = []
    for number in (1, 2, 3):
        history.append(metrics(number, 1.0 / number))
        checkpoints.save_round(replace(_round(number), history=history))
    latest = checkpoints.latest_round()
    assert latest is not None and latest.history == [metrics(r, 1.0 / r) for r in (1, 2, 3)]
    replaced = [metrics(1, 9.0), metrics(2, 8.0), metrics(3, 7.0), metrics(4, 6.0)]
    checkpoints.save_round(replace(_round(4), history=replaced))
    latest = checkpoints.latest_round()
    assert latest is not None and latest.history == replaced


def test_every_rounds_model_is_kept_beside_the_pruned_round_checkpoints_and_a_fresh_start_drops_them(
    tmp_path: Path,
) -> None:
    checkpoints = LeafCheckpoints(tmp_path / "checkpoints")
    assert checkpoints.round_models() == {}
    for number in (1, 2, 3):
        checkpoints.save_round(_round(number))
        checkpoints.save_round_model(number, _round(number).parameters)
    kept = checkpoints.round_models()
    assert sorted(kept) == [1, 2, 3]
    for number, layers in kept.items():
        for a, b in zip(layers, _round(number).parameters, strict=True):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    assert len(list((tmp_path / "checkpoints").glob("round-*.npz"))) == 2
    damaged = tmp_path / "checkpoints" / "model-000002.npz"
    damaged.write_bytes(damaged.read_bytes()[:30])
    with pytest.raises(CheckpointError, match=rf"^checkpoint {damaged} cannot be read \(.*\) \(fix: delete it; the "
                       r"run's best round's model is then not kept unless it is the last\)$"):
        checkpoints.round_models()
    checkpoints.clear()
    assert checkpoints.round_models() == {}


def test_a_damaged_or_newer_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    checkpoints = LeafCheckpoints(tmp_path)
    checkpoints.save_round(_round(1))
    path = tmp_path / "round-000001.npz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path} cannot be read \(.*\) \(fix: delete it to resume "
                       r"from the round before, or start the run again without --resume\)$"):
        checkpoints.latest_round()
    (tmp_path / "agreement.json").write_text(json.dumps({"format": 9}))
    with pytest.raises(CheckpointError) as caught:
        checkpoints.load_agreement()
    assert str(caught.value) == (f"checkpoint {tmp_path / 'agreement.json'} has format 9; this fedgrove reads format "
                                 "1 (fix: resume with the fedgrove version that started the run)")


def test_the_pair_secrets_are_forgotten_once_the_rounds_are_done(tmp_path: Path) -> None:
    preprocessing = Preprocessing(target="outcome", labels=["no", "yes"], numeric={"age": 50.0}, categorical=[],
                                  encoded=[EncodedColumn(name="age", column="age", mean=50.0, std=9.0)],
                                  training_records=80)
    secure = SecureRound(site="a", roster=["a", "b"], secrets={"b": b"\x01" * 32}, run_id="week-49")
    plan = PrivacyPlan(rounds=3, secure=secure)
    checkpoints = LeafCheckpoints(tmp_path)
    checkpoints.save_agreement(Agreement(preprocessing=preprocessing, privacy=plan, loaded=["p1", "p2"]))
    agreement = checkpoints.load_agreement()
    assert agreement is not None and agreement.privacy.secure is not None
    assert agreement.privacy.secure.secrets == {"b": b"\x01" * 32} and agreement.loaded == ["p1", "p2"]
    checkpoints.forget_secrets()
    assert "01" * 32 not in (tmp_path / "agreement.json").read_text()
    after = checkpoints.load_agreement()
    assert after is not None and after.privacy.secure is not None and after.privacy.secure.secrets == {}
    assert after.preprocessing == preprocessing


def _record(tmp_path: Path) -> RunRecord:
    record = RunRecord(run_id="week-49", mode="local", spec=demo_spec(None, DemoOptions(rounds=30)),
                       demo=DemoOptions(rounds=30))
    write_run_record(tmp_path, record)
    return record


def test_a_run_record_refuses_every_change_by_name(tmp_path: Path) -> None:
    record = _record(tmp_path)
    assert read_run_record(tmp_path, "week-49") == record
    changed = record.spec.model_copy(update={"train": record.spec.train.model_copy(update={"learning_rate": 0.1}),
                                             "min_records": 20})
    with pytest.raises(ResumeRefused) as caught:
        refuse_changed_spec(record, changed)
    assert str(caught.value) == (
        f"run week-49 cannot resume with a different spec: min_records: {record.spec.min_records} -> 20; "
        f"train.learning_rate: {record.spec.train.learning_rate} -> 0.1 (fix: resume with the spec it started with, "
        "or start a new run without --resume)")
    refuse_changed_spec(record, record.spec)  # the same spec resumes
    with pytest.raises(ResumeRefused) as caught:
        refuse_changed_mode(record, "sites")
    assert str(caught.value) == ("run week-49 cannot resume in sites mode: it started in local mode (fix: resume it "
                                 "in local mode)")
    with pytest.raises(ResumeRefused) as caught:
        refuse_changed_demo(record, DemoOptions(rounds=30, sites=3))
    assert str(caught.value) == ("run week-49 cannot resume with different demo options: demo.sites: 5 -> 3 (fix: "
                                 "resume without them, or start a new run without --resume)")
    refuse_changed_demo(record, DemoOptions())  # no options given: the run's own


def test_a_missing_unreadable_newer_or_finished_record_is_refused_exactly(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    with pytest.raises(ResumeRefused) as caught:
        read_run_record(tmp_path, "week-49")
    assert str(caught.value) == (f"run week-49 cannot resume: there is no record of it at {path} (fix: check the run "
                                 f"id against the folders in {tmp_path.parent}, and FEDGROVE_WORK_DIR)")
    record = _record(tmp_path)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "format": 99}))
    with pytest.raises(ResumeRefused) as caught:
        read_run_record(tmp_path, "week-49")
    assert str(caught.value) == (f"run week-49 cannot resume: its record {path} has format 99, newer than this "
                                 "fedgrove's 1 (fix: resume with the fedgrove version that started it)")
    path.write_text("{not json")
    with pytest.raises(ResumeRefused, match=rf"^run week-49 cannot resume: its record {path} cannot be read \(.*\) "
                       r"\(fix: start the run again without --resume\)$"):
        read_run_record(tmp_path, "week-49")
    write_run_record(tmp_path, record.model_copy(update={"finished": True}))
    with pytest.raises(ResumeRefused) as caught:
        read_run_record(tmp_path, "week-49")
    assert str(caught.value) == ("run week-49 finished already: there is nothing to resume (fix: start a new run "
                                 "without --resume)")
