"""Federated preprocessing in memory (every site's protocol in lockstep, the server replaced by a sum),
checked against pandas and statsmodels on the pooled training records (`tests/pooled_reference.py`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgrove.encoding import Preprocessing
from fedgrove.exchanges import STEP_FIELD
from fedgrove.federated_preprocessing import preprocessing_protocol
from fedgrove.lockstep import run_in_lockstep, sum_fields
from fedgrove.schema import FederationRefused
from fedgrove.site_table import SiteTable, prepare_site_table
from tests.data_sets import affairs, anes96, breast_cancer, pooled_training, site_tables, spec_for
from tests.pooled_reference import lrt_statistics, pooled_preprocessing, top_k


def federate(spec, tables: dict[str, SiteTable]) -> Preprocessing:  # type: ignore[no-untyped-def]
    agreed, _steps = run_in_lockstep(
        {site: preprocessing_protocol(spec=spec, site=site, table=tables[site]) for site in spec.roster()}
    )
    results = {a.preprocessing.model_dump_json() for a in agreed.values()}
    assert len(results) == 1, "every site derives the same preprocessing"
    return next(iter(agreed.values())).preprocessing


CASES = {
    "breast-cancer-iid": (breast_cancer, "diagnosis", {"select": {"k": 4}}, "iid", [], None),
    "breast-cancer-dirichlet": (breast_cancer, "diagnosis", {"select": {"k": 4}}, "dirichlet", [], None),
    "affairs-dirichlet": (affairs, "affair", {"select": {"k": 8}, "exclude": ["patient_id"]}, "dirichlet",
                          ["occupation", "region"], None),
    "anes96-codes-as-categories": (anes96, "vote", {"select": {"k": 5}, "categorical": ["PID", "educ"]}, "iid",
                                   ["PID", "educ"], None),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):  # type: ignore[no-untyped-def]
    load, target, keys, split, categorical, _ = CASES[request.param]
    spec = spec_for(target, **keys)
    tables = site_tables(load(), spec, split=split)
    preprocessing = federate(spec, tables)
    train = pooled_training(tables)
    numeric = [c for c in train.columns if c not in (target, *spec.exclude, *categorical)]
    pooled = pooled_preprocessing(train, numeric=numeric, categorical=categorical, min_category_count=5)
    y = (train[target] == preprocessing.labels[1]).to_numpy(dtype=float)
    return {"spec": spec, "preprocessing": preprocessing, "pooled": pooled, "y": y}


def test_the_encoded_columns_are_those_of_the_pooled_encoding(case) -> None:
    assert sorted(c.name for c in case["preprocessing"].encoded) == sorted(case["pooled"].encoded.columns)


def test_means_and_standard_deviations_equal_pandas_on_the_pooled_records_to_1e_9(case) -> None:
    pooled = case["pooled"]
    for column in case["preprocessing"].encoded:
        assert column.mean == pytest.approx(pooled.means[column.name], rel=1e-9, abs=1e-12), column.name
        assert column.std == pytest.approx(pooled.stds[column.name], rel=1e-9), column.name


def test_the_selected_features_and_their_p_values_equal_statsmodels_on_the_pooled_records(case) -> None:
    k = case["spec"].select.k
    expected, p_values = top_k(lrt_statistics(case["pooled"], case["y"]), k)
    assert case["preprocessing"].selected == expected
    np.testing.assert_allclose(case["preprocessing"].p_values, p_values, rtol=1e-6)


def test_the_rare_regions_become_other_and_the_missing_occupations_get_a_level_of_their_own() -> None:
    spec = spec_for("affair", exclude=["patient_id"])
    preprocessing = federate(spec, site_tables(affairs(), spec, split="dirichlet"))
    levels = {c.column: c for c in preprocessing.categorical}
    assert levels["region"].levels == ["east", "north", "south", "west"] and levels["region"].other
    assert levels["occupation"].levels == sorted(["student", "farming", "white-collar", "teacher", "manager",
                                                  "professional"])
    assert levels["occupation"].missing and not levels["occupation"].other
    assert "patient_id" not in {c.column for c in preprocessing.encoded}
    assert preprocessing.labels == ["no", "yes"]


def test_what_the_sites_send_is_counts_sums_and_frequent_names_only() -> None:
    """Every field's shape is fixed by the spec and the agreed columns, never by a site's record count, and
    the two rare regions (about 2 records each) are named in nothing a site sends."""
    spec = spec_for("affair", sites=3, exclude=["patient_id"], select={"k": 3})
    tables = site_tables(affairs(), spec, split="dirichlet")
    sent: dict[str, list[dict[str, np.ndarray]]] = {site: [] for site in spec.roster()}

    def recording(site: str):  # type: ignore[no-untyped-def]
        protocol = preprocessing_protocol(spec=spec, site=site, table=tables[site])
        step, fields = next(protocol)
        while True:
            sent[site].append(fields)
            pooled = yield step, fields
            try:
                step, fields = protocol.send(pooled)
            except StopIteration as finished:
                return finished.value

    run_in_lockstep({site: recording(site) for site in spec.roster()})
    sizes = {len(t.train) for t in tables.values()}
    assert len(sizes) == 3, "the sites hold different numbers of records"
    for exchanges in zip(*sent.values(), strict=True):
        for name in exchanges[0]:
            assert len({e[name].shape for e in exchanges}) == 1, name
            assert not any(dim in sizes for dim in exchanges[0][name].shape), name
    everything = b"".join(a.tobytes() for site in sent.values() for fields in site for a in fields.values())
    text = b"".join(np.frombuffer(everything, dtype=np.uint8).tobytes().split(b"\x00"))
    import zlib

    documents = []
    for site in sent.values():
        for fields in site:
            rows = fields.get("document_rows_sum")
            if rows is not None:
                for row in rows:
                    length = int.from_bytes(row[:4].tobytes(), "little")
                    if length:
                        documents.append(zlib.decompress(row[4:4 + length].tobytes()))
    assert documents and not any(b"islands" in d or b"capital" in d for d in documents)
    assert b"islands" not in text and b"capital" not in text


def refusal(spec, tables):  # type: ignore[no-untyped-def]
    with pytest.raises(FederationRefused) as raised:
        federate(spec, tables)
    return str(raised.value)


def three_sites(frame: pd.DataFrame, target: str, **keys: object) -> tuple:
    spec = spec_for(target, sites=3, **keys)
    return spec, site_tables(frame, spec)


def test_a_site_that_lacks_a_column_stops_every_site_naming_it_the_column_and_the_fix() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis")
    table = tables["site-2"]
    tables["site-2"] = SiteTable("site-2", table.train.drop(columns="mean area"),
                                 table.test.drop(columns="mean area"), 0)
    assert refusal(spec, tables) == (
        "the sites cannot federate: site site-2 lacks column 'mean area' that sites site-1, site-3 have (fix: add it "
        "at site-2, or list 'mean area' under exclude)"
    )


def test_a_listed_feature_missing_at_a_site_is_named_with_its_site() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis", features=["mean radius", "mean area"])
    table = tables["site-3"]
    tables["site-3"] = SiteTable("site-3", table.train.drop(columns="mean area"),
                                 table.test.drop(columns="mean area"), 0)
    assert refusal(spec, tables) == (
        "the sites cannot federate: site site-3 lacks feature column 'mean area' (fix: add it at site-3, or remove it "
        "from features)"
    )


def test_a_numeric_column_holding_text_at_one_site_is_refused_with_a_count_never_the_values() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis")
    train = tables["site-1"].train.copy()
    train["mean radius"] = train["mean radius"].astype(object)
    train.loc[[0, 4], "mean radius"] = ["n/a", "twelve"]
    tables["site-1"] = SiteTable("site-1", train, tables["site-1"].test, 0)
    message = refusal(spec, tables)
    assert message == (
        "the sites cannot federate: site site-1: column 'mean radius' holds text in 2 records where the sites hold "
        "numbers (fix: clean those values at site-1, or list 'mean radius' under categorical)"
    )


def test_a_column_empty_at_every_site_is_refused() -> None:
    frame = breast_cancer()
    frame["notes"] = np.nan
    spec, tables = three_sites(frame, "diagnosis")
    assert refusal(spec, tables) == ("the sites cannot federate: column 'notes' is empty at every site (fix: list it "
                                     "under exclude)")


def test_a_target_with_three_labels_overall_is_refused_for_a_binary_task() -> None:
    frame = breast_cancer()
    frame.loc[frame.index[:40], "diagnosis"] = "unclear"
    spec, tables = three_sites(frame, "diagnosis")
    assert refusal(spec, tables) == (
        "the sites cannot federate: target 'diagnosis' has 3 distinct labels across the sites ('benign', 'malignant', "
        "'unclear'); task binary needs exactly 2 (fix: choose another target, or map its values to two labels at "
        "every site)"
    )


def test_a_site_with_fewer_than_min_records_is_refused_by_every_site() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis", min_records=10)
    small = tables["site-3"].train.iloc[:7]
    tables["site-3"] = SiteTable("site-3", small, tables["site-3"].test.iloc[:2], 0)
    assert refusal(spec, tables) == (
        "the sites cannot federate: site site-3 has 9 labelled records, fewer than min_records 10 (fix: leave the "
        "site out, or lower min_records for every site)"
    )


def test_k_larger_than_the_encoded_features_is_refused_naming_how_many_there_are() -> None:
    spec, tables = three_sites(anes96(), "vote", select={"k": 40}, categorical=["PID"])
    assert refusal(spec, tables) == ("the sites cannot federate: select.k is 40 but the sites' columns encode to 16 "
                                     "features (fix: choose k <= 16)")


def test_a_site_holding_one_label_only_takes_part() -> None:
    frame = breast_cancer()
    spec = spec_for("diagnosis", sites=3, select={"k": 2})
    tables = site_tables(frame, spec)
    only_benign = frame[frame["diagnosis"] == "benign"].iloc[:60]
    tables["site-2"] = prepare_site_table(only_benign, site="site-2", target="diagnosis", test_fraction=0.2, seed=0)
    preprocessing = federate(spec, tables)
    assert preprocessing.labels == ["benign", "malignant"]
    assert len(preprocessing.selected or []) == 2


def test_a_site_that_cannot_read_its_data_stops_every_site_with_its_public_reason() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis")
    protocols = {
        site: preprocessing_protocol(spec=spec, site=site, table=None if site == "site-2" else tables[site],
                                     error="its data source (a CSV file) does not exist")
        for site in spec.roster()
    }
    with pytest.raises(FederationRefused) as raised:
        run_in_lockstep(protocols)
    assert str(raised.value) == ("the sites cannot federate: site site-2: its data source (a CSV file) does not "
                                 "exist")


def test_sites_running_different_specs_are_refused() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis")
    other = spec.model_copy(update={"min_category_count": 9})
    protocols = {site: preprocessing_protocol(spec=other if site == "site-3" else spec, site=site,
                                              table=tables[site]) for site in spec.roster()}
    with pytest.raises(FederationRefused) as raised:
        run_in_lockstep(protocols)
    assert str(raised.value).startswith("the sites cannot federate: site site-1 runs spec ")
    assert str(raised.value).endswith("(fix: give every site the same spec file)")


def test_a_late_retry_counted_in_a_later_exchange_stops_every_site() -> None:
    spec, tables = three_sites(breast_cancer(), "diagnosis")
    protocols = {site: preprocessing_protocol(spec=spec, site=site, table=tables[site]) for site in spec.roster()}
    sent = {site: next(p) for site, p in protocols.items()}
    schema = sum_fields([fields for _, fields in sent.values()])
    moments = {site: p.send(schema) for site, p in protocols.items()}
    combined = sum_fields([fields for _, fields in moments.values()])
    combined[STEP_FIELD] = combined[STEP_FIELD] - 1  # one site's contribution is its schema upload, retried late
    with pytest.raises(FederationRefused) as raised:
        protocols["site-1"].send(combined)
    assert str(raised.value) == (
        "the sites cannot federate: exchange 'moments' combined 3 contributions tagged 5, expected 3 tagged 6: a late "
        "retry of an earlier upload was counted in it (fix: run again; each run uses a fresh branch)"
    )


def test_a_category_that_separates_the_labels_does_not_stop_the_selection() -> None:
    """A rare-but-kept category all of one label has no finite slope; its log-likelihood still settles."""
    frame = breast_cancer()
    frame["clinic"] = np.where(np.arange(len(frame)) % 7 == 0, "north", "south")
    frame.loc[frame["diagnosis"] == "malignant", "clinic"] = "south"
    spec = spec_for("diagnosis", sites=3, select={"k": 3})
    preprocessing = federate(spec, site_tables(frame, spec))
    assert len(preprocessing.selected or []) == 3
