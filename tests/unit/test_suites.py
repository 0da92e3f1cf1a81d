"""The expectation suites in expectations/ load into GX and match the registry's tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from riverdelta import quality
from riverdelta.registry import load_registry

pytestmark = pytest.mark.unit

SUITE_FILES = sorted(quality.SUITES_DIR.glob("*.json"))


def _fields_with(attr: str):
    for spec in load_registry().streams.values():
        for f in spec.fields:
            if getattr(f, attr) is not None:
                yield spec, f


def test_every_table_has_a_suite_and_every_suite_a_table():
    tables = set(quality.all_tables())
    suites = {p.stem for p in SUITE_FILES}
    assert tables - suites == set(), "tables without a suite"
    assert suites - tables == set(), "suites for tables the registry does not have"


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.stem)
def test_suite_builds_in_gx(path):
    import great_expectations as gx

    suite = quality.build_suite(path.stem)
    assert isinstance(suite, gx.ExpectationSuite)
    assert suite.name == path.stem
    assert len(suite.expectations) == len(quality.load_suite(path.stem)["expectations"]) > 0


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.stem)
def test_suite_names_only_existing_columns(path):
    doc = quality.load_suite(path.stem)
    unknown = quality.suite_columns(doc) - quality.expected_columns(path.stem)
    assert unknown == set(), f"{path.name} names columns the table does not have"
    ref = quality.resolve_table(path.stem)
    for check in doc.get("riverdelta_checks", []):
        assert check["check"] in quality.CHECKS
        if "gold" in check:
            assert ref.layer == f"gold_{check['gold']}"


def test_allowed_sets_and_minimums_match_the_contract():
    for spec, f in _fields_with("allowed"):
        doc = quality.load_suite(spec.table_names()["silver"])
        sets = [
            e["kwargs"]["value_set"]
            for e in doc["expectations"]
            if e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"]["column"] == f.name
        ]
        assert sets == [list(f.allowed)], f"{spec.name}.{f.name}"
    for spec, f in _fields_with("min"):
        doc = quality.load_suite(spec.table_names()["silver"])
        mins = [
            e["kwargs"]["min_value"]
            for e in doc["expectations"]
            if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == f.name
        ]
        assert mins == [f.min], f"{spec.name}.{f.name}"


def test_silver_requires_every_non_nullable_field_and_unique_ids():
    for spec in load_registry().streams.values():
        doc = quality.load_suite(spec.table_names()["silver"])
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
    doc = quality.load_suite("transactions_silver")
    suite = quality.build_suite(doc)
    between = [
        e
        for e in suite.expectations
        if e.expectation_type == "expect_column_values_to_be_between"
        and getattr(e, "column", None) == "event_time"
    ]
    assert between and between[0].max_value == {"$PARAMETER": "now_plus_1_day"}
    now = datetime(2025, 1, 1, tzinfo=UTC)
    params = quality.suite_parameters(doc, now=now)
    assert params["now_plus_1_day"] == now + timedelta(days=1)
    assert params["timestamp_2000_01_01T00_00_00Z"] == datetime(2000, 1, 1, tzinfo=UTC)


def test_unknown_check_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "transactions_bronze.json"
    bad.write_text(
        '{"name": "transactions_bronze", "expectations": [], "riverdelta_checks": [{"check": "nope"}]}'
    )
    monkeypatch.setattr(quality, "SUITES_DIR", tmp_path)
    with pytest.raises(ValueError, match="unknown riverdelta check 'nope'"):
        quality.load_suite("transactions_bronze")
