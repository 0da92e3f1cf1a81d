"""Each table's suite, derived from the contract and refined by expectations/, loads into GX."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from riverdelta.config.registry import load_registry
from riverdelta.quality import suites
from riverdelta.quality.checks import CHECKS
from riverdelta.quality.gx import build_suite, load_suite, suite_columns, suite_parameters
from riverdelta.quality.tables import all_tables, resolve_table

pytestmark = pytest.mark.unit

TABLES = all_tables()


def _fields_with(attr: str):
    for spec in load_registry().streams.values():
        for f in spec.fields:
            if getattr(f, attr) is not None:
                yield spec, f


def test_every_suite_file_refines_a_table_of_the_registry():
    files = {p.stem for p in suites.SUITES_DIR.glob("*.json")}
    assert files - set(TABLES) == set(), "suite files for tables the registry does not have"


@pytest.mark.parametrize("table", TABLES)
def test_suite_builds_in_gx(table):
    import great_expectations as gx

    suite = build_suite(table)
    assert isinstance(suite, gx.ExpectationSuite)
    assert suite.name == table
    assert len(suite.expectations) == len(load_suite(table)["expectations"]) > 0
    # Data Docs show where each expectation came from.
    assert all(e.notes.startswith(("[contract]", "[expectations/")) for e in suite.expectations)


KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, "
    "timestamp timestamp, timestampType int"
)


@pytest.fixture(scope="module")
def table_columns(spark) -> dict[str, set[str]]:
    """Each table's columns, from the code that writes it (empty DataFrames: no data, no Delta)."""
    from riverdelta.storage.lake import TableSet
    from riverdelta.stream import batch, gold
    from riverdelta.stream import transforms as T
    from riverdelta.stream.job import IngestJob, IngestMode

    raw = spark.createDataFrame([], KAFKA_SCHEMA)
    out: dict[str, set[str]] = {}
    for spec in load_registry().streams.values():
        names = spec.table_names()
        job = IngestJob(spec, IngestMode.LIVE, TableSet.for_stream(spec), "cp", "app", "batches")
        valid, invalid = T.split(T.validate(raw, spec))
        # No horizon: the ingest's tagging of new silver rows, without reading silver.
        silver = batch.new_silver_rows(spark, T.to_silver(valid, spec), job, 0, ())
        out[names["bronze"]] = set(batch.to_bronze(raw, 0, job.txn_app_id).columns)
        # process_batch adds the batch id to the quarantined rows as it writes them.
        out[names["quarantine"]] = {*T.to_quarantine(invalid).columns, "batch_id"}
        out[names["silver"]] = set(silver.columns)
        for g in spec.gold:
            out[names[f"gold_{g.name}"]] = set(gold.recompute(silver, spec, g, [0])[0].columns)
    return out


def test_every_table_has_its_columns_derived(table_columns):
    assert set(table_columns) == set(TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_suite_names_only_existing_columns(table, table_columns):
    doc = load_suite(table)
    unknown = suite_columns(doc) - table_columns[table]
    assert unknown == set(), f"{table}'s suite names columns the table does not have"
    ref = resolve_table(table)
    for check in doc.get("riverdelta_checks", []):
        assert check["check"] in CHECKS
        if "gold" in check:
            assert ref.layer == f"gold_{check['gold']}"


def test_allowed_sets_and_minimums_match_the_contract():
    for spec, f in _fields_with("allowed"):
        doc = load_suite(spec.table_names()["silver"])
        sets = [
            e["kwargs"]["value_set"]
            for e in doc["expectations"]
            if e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"]["column"] == f.name
        ]
        assert sets == [list(f.allowed)], f"{spec.name}.{f.name}"
    for spec, f in _fields_with("min"):
        doc = load_suite(spec.table_names()["silver"])
        mins = [
            e["kwargs"]["min_value"]
            for e in doc["expectations"]
            if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == f.name
        ]
        assert mins == [f.min], f"{spec.name}.{f.name}"


def test_silver_requires_every_non_nullable_field_and_unique_ids():
    for spec in load_registry().streams.values():
        doc = load_suite(spec.table_names()["silver"])
        not_null = {
            e["kwargs"]["column"]
            for e in doc["expectations"]
            if e["type"] == "expect_column_values_to_not_be_null"
        }
        assert {f.name for f in spec.fields if not f.nullable} <= not_null
        assert not {f.name for f in spec.fields if f.nullable} & not_null
        assert {"type": "expect_column_values_to_be_unique", "column": spec.id_column} in [
            {"type": e["type"], "column": e["kwargs"].get("column")} for e in doc["expectations"]
        ]


def test_time_placeholders_become_gx_parameters_resolved_at_run_time():
    doc = load_suite("transactions_silver")
    suite = build_suite(doc)
    between = [
        e
        for e in suite.expectations
        if e.expectation_type == "expect_column_values_to_be_between"
        and getattr(e, "column", None) == "event_time"
    ]
    assert between and between[0].max_value == {"$PARAMETER": "now_plus_1_day"}
    now = datetime(2025, 1, 1, tzinfo=UTC)
    params = suite_parameters(doc, now=now)
    assert params["now_plus_1_day"] == now + timedelta(days=1)
    assert params["timestamp_2000_01_01T00_00_00Z"] == datetime(2000, 1, 1, tzinfo=UTC)


def test_unknown_check_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "transactions_bronze.json"
    bad.write_text(
        '{"name": "transactions_bronze", "expectations": [], "riverdelta_checks": [{"check": "nope"}]}'
    )
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    with pytest.raises(ValueError, match="unknown riverdelta check 'nope'"):
        load_suite("transactions_bronze")


def _rules(doc: dict) -> dict:
    return {(e["type"], str(e["kwargs"].get("column"))): e for e in doc["expectations"]}


def test_a_file_overrides_adds_and_drops_what_the_contract_derives(tmp_path, monkeypatch):
    derived = suites.derived_suite("transactions_silver")
    (tmp_path / "transactions_silver.json").write_text(
        """{"name": "transactions_silver",
            "expectations": [
              {"type": "expect_column_values_to_be_between",
               "kwargs": {"column": "amount", "min_value": 0, "max_value": 100000},
               "meta": {"why": "No single payment above 100k."}},
              {"type": "expect_column_value_lengths_to_be_between",
               "kwargs": {"column": "merchant", "min_value": 1, "max_value": 80}}],
            "drop": [{"type": "expect_column_values_to_not_be_null", "column": "merchant"}],
            "riverdelta_checks": [{"check": "reconcile_bronze"}]}"""
    )
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    doc = load_suite("transactions_silver")
    rules = _rules(doc)
    amount = rules[("expect_column_values_to_be_between", "amount")]
    assert amount["kwargs"]["max_value"] == 100000 and amount["meta"]["source"] == "file"
    assert (
        amount["notes"] == "[expectations/transactions_silver.json] No single payment above 100k."
    )
    assert (
        rules[("expect_column_value_lengths_to_be_between", "merchant")]["meta"]["source"] == "file"
    )
    assert ("expect_column_values_to_not_be_null", "merchant") not in rules
    assert len(doc["expectations"]) == len(derived["expectations"]) + 1 - 1
    assert doc["riverdelta_checks"] == [{"check": "reconcile_bronze"}]
    kept = rules[("expect_column_values_to_not_be_null", "event_id")]
    assert kept["meta"]["source"] == "contract" and kept["notes"].startswith("[contract]")


def test_dropping_what_the_contract_does_not_derive_is_refused(tmp_path, monkeypatch):
    (tmp_path / "transactions_silver.json").write_text(
        '{"drop": [{"type": "expect_column_values_to_not_be_null", "column": "nope"}]}'
    )
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    with pytest.raises(ValueError, match="drop names expectations the contract does not derive"):
        load_suite("transactions_silver")


def test_a_stream_with_no_suite_file_gets_its_suites_from_the_contract(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)  # no files at all
    for spec in load_registry().streams.values():
        for table in spec.table_names().values():
            doc = load_suite(table)
            assert doc["expectations"] and all(
                e["meta"]["source"] == "contract" for e in doc["expectations"]
            )
    bronze = load_suite("transactions_bronze")
    assert {"check": "reconcile_bronze"} in bronze["riverdelta_checks"]
    topic = _rules(bronze)[("expect_column_values_to_be_in_set", "topic")]
    assert topic["kwargs"]["value_set"] == ["rd.transactions"]
    gold = load_suite("transactions_gold_user_5m")
    assert gold["riverdelta_checks"] == [{"check": "gold_matches_silver", "gold": "user_5m"}]
