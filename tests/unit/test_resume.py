"""Where a query on a new checkpoint starts when its tables already hold data."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytestmark = pytest.mark.unit

TOPIC = "rd.t"


def _tps(by_partition: dict[int, int], topic: str = TOPIC) -> dict[tuple[str, int], int]:
    return {(topic, p): o for p, o in by_partition.items()}


def _start(asked: str | None, held: dict[int, int], partitions=(0, 1, 2)) -> dict:
    """The per-partition start a new checkpoint gets (offsets JSON cases only)."""
    from riverdelta.stream.source import kafka_starting_options, resume_options

    tps = [(TOPIC, p) for p in partitions]
    options = resume_options(kafka_starting_options(asked), _tps(held), tps)
    return json.loads(options["startingOffsets"])[TOPIC]


def test_earliest_moves_up_to_what_the_tables_hold():
    # Partition 2 was never seen by the tables: it starts at its earliest (-2).
    assert _start("earliest", {0: 120, 1: 98}) == {"0": 120, "1": 98, "2": -2}
    assert _start(None, {0: 5, 1: 5, 2: 5}) == {"0": 5, "1": 5, "2": 5}


def test_explicit_offsets_never_go_below_what_is_held():
    asked = json.dumps({TOPIC: {"0": 50, "1": 500}})
    # Below the held position: held wins. Beyond it: as asked (a gap the user wanted).
    assert _start(asked, {0: 120, 1: 98}) == {"0": 120, "1": 500, "2": -2}


def test_each_topic_of_a_stream_resumes_at_its_own_positions():
    from riverdelta.stream.source import kafka_starting_options, resume_options

    held = {("a", 0): 7, ("b", 0): 3}
    options = resume_options(kafka_starting_options("earliest"), held, [("a", 0), ("b", 0)])
    assert json.loads(options["startingOffsets"]) == {"a": {"0": 7}, "b": {"0": 3}}


def test_empty_tables_and_latest_are_left_as_asked():
    from riverdelta.stream.source import kafka_starting_options, resume_options

    assert resume_options(kafka_starting_options("earliest"), {}, [(TOPIC, 0)]) == {
        "startingOffsets": "earliest"
    }
    assert resume_options(kafka_starting_options("latest"), _tps({0: 9}), [(TOPIC, 0)]) == {
        "startingOffsets": "latest"
    }


def test_a_checkpoint_refuses_a_stream_whose_source_changed(tmp_path):
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import SHIPPED_STREAMS
    from riverdelta.stream.job import CheckpointMismatchError, claim_checkpoint

    spec = load_registry(SHIPPED_STREAMS).get("transactions")
    cp = str(tmp_path / "cp")
    txn_app_id = claim_checkpoint(cp, spec, "live")
    assert claim_checkpoint(cp, spec, "live") == txn_app_id
    wider = dataclasses.replace(spec, topics=("rd.transactions", "rd.transactions.eu"))
    with pytest.raises(
        CheckpointMismatchError, match=r"the registry now says rd\.transactions, rd"
    ):
        claim_checkpoint(cp, wider, "live")
    # A marker written before streams had several topics still belongs to its stream.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "_riverdelta.json").write_text(
        json.dumps({"stream": spec.name, "topic": spec.topic, "mode": "live", "app_id": "x"})
    )
    assert claim_checkpoint(str(tmp_path / "old"), spec, "live") == "x"
