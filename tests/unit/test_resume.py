"""Where a query on a new checkpoint starts when its tables already hold data."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.unit

TOPIC = "rd.t"


def _start(asked: str | None, held: dict[int, int], partitions=(0, 1, 2)) -> dict:
    """The per-partition start a new checkpoint gets (offsets JSON cases only)."""
    from riverdelta.ingest import kafka_starting_options, resume_options

    options = resume_options(kafka_starting_options(asked), held, list(partitions), TOPIC)
    return json.loads(options["startingOffsets"])[TOPIC]


def test_earliest_moves_up_to_what_the_tables_hold():
    # Partition 2 was never seen by the tables: it starts at its earliest (-2).
    assert _start("earliest", {0: 120, 1: 98}) == {"0": 120, "1": 98, "2": -2}
    assert _start(None, {0: 5, 1: 5, 2: 5}) == {"0": 5, "1": 5, "2": 5}


def test_explicit_offsets_never_go_below_what_is_held():
    asked = json.dumps({TOPIC: {"0": 50, "1": 500}})
    # Below the held position: held wins. Beyond it: as asked (a gap the user wanted).
    assert _start(asked, {0: 120, 1: 98}) == {"0": 120, "1": 500, "2": -2}


def test_empty_tables_and_latest_are_left_as_asked():
    from riverdelta.ingest import kafka_starting_options, resume_options

    assert resume_options(kafka_starting_options("earliest"), {}, [0], TOPIC) == {
        "startingOffsets": "earliest"
    }
    assert resume_options(kafka_starting_options("latest"), {0: 9}, [0], TOPIC) == {
        "startingOffsets": "latest"
    }
