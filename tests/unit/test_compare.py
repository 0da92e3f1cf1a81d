"""The bounded `==` explanation: short, and it names what differs."""

from __future__ import annotations

import pytest

from tests.compare import LIMIT, explain_eq
from tests.conftest import pytest_assertrepr_compare

pytestmark = pytest.mark.unit

BIG = 200_000


def test_large_sets_name_the_missing_and_extra_items():
    left = set(range(BIG)) - {17} | {-1}
    lines = pytest_assertrepr_compare("==", left, set(range(BIG)))
    assert lines == [
        f"set of {BIG} == set of {BIG} (bounded explanation: tests/compare.py)",
        "missing on the left: [17]",
        "extra on the left: [-1]",
    ]


def test_large_lists_say_where_they_part():
    right = list(range(BIG))
    left = right[:5] + right[6:]
    lines = explain_eq(left, right)
    assert lines is not None and len(lines) == 3
    assert lines[1] == "missing on the left: [5]"
    assert lines[2] == "first difference at index 5: 6 != 5"


def test_large_mappings_name_keys_and_a_differing_value():
    right = {i: i for i in range(BIG)}
    left = {i: i for i in range(1, BIG)} | {7: "x", BIG: 0}
    lines = explain_eq(left, right)
    assert lines is not None
    assert lines[1:] == [
        "keys missing on the left: [0]",
        f"keys extra on the left: [{BIG}]",
        "1 keys differ; first 7: 'x' != 7",
    ]


def test_unhashable_items_still_get_an_index():
    right = [{"n": i} for i in range(LIMIT + 1)]
    left = [*right[:-1], {"n": -1}]
    assert (
        explain_eq(left, right)[-1]
        == f"first difference at index {LIMIT}: {{'n': -1}} != {{'n': {LIMIT}}}"
    )


def test_long_text_gives_the_offset():
    right = "a" * 50_000
    assert explain_eq(right[:-1] + "b", right)[1].startswith(
        "first difference at 49999: 'b' != 'a'"
    )


def test_small_values_keep_pytests_explanation():
    assert explain_eq([1, 2], [1, 3]) is None
    assert explain_eq("ab", "ac") is None
    assert pytest_assertrepr_compare("<", list(range(BIG)), []) is None
