"""Backfill requests resolve to exact offset ranges, or are refused with a reason."""

from __future__ import annotations

import pytest

from riverdelta.backfill.replay import BackfillRefused, clip_to, parse_offsets, resolve

pytestmark = pytest.mark.unit

MARKS = {("t", 0): (100, 500), ("t", 1): (0, 300), ("t", 2): (50, 50)}


def tps(by_partition: dict[int, int], topic: str = "t") -> dict[tuple[str, int], int]:
    return {(topic, p): o for p, o in by_partition.items()}


def r(from_="earliest", to="latest", lookup=None):
    return resolve(
        "t", "unused:0", from_, to, watermarks=MARKS, time_lookup=lookup or (lambda *a: {})
    )


def test_earliest_to_latest():
    rng = r()
    assert rng.start == tps({0: 100, 1: 0, 2: 50})
    assert rng.end == tps({0: 500, 1: 300, 2: 50})
    assert rng.records == 400 + 300


def test_offsets_json_both_forms_and_defaults():
    assert r('{"0": 200}', '{"t": {"0": 250, "1": 10}}').start == tps({0: 200, 1: 0, 2: 50})
    assert r('{"0": 200}', '{"t": {"0": 250, "1": 10}}').end == tps({0: 250, 1: 10, 2: 50})


def test_timestamps_use_the_lookup():
    seen = {}

    def lookup(bootstrap, at, high):
        seen["at"] = at
        return tps({0: 300, 1: 200, 2: 50})

    rng = r("2026-11-21T00:00:00Z", "latest", lookup)
    assert rng.start == tps({0: 300, 1: 200, 2: 50})
    assert seen["at"] == 1795219200.0


@pytest.mark.parametrize(
    ("from_", "to", "message"),
    [
        (
            '{"0": 40}',
            "latest",
            r"60 record\(s\) were deleted by retention.*partition 0: 60 record",
        ),
        ('{"0": 400}', '{"0": 300}', "to is before from"),
        ('{"7": 1}', "latest", r"unknown partition\(s\) \['t partition 7'\]"),
        ('{"u": {"0": 1}}', "latest", "topic 'u' is not read by this stream"),
        ('{"0": 1', "latest", "malformed offsets JSON"),
        ('{"0": -1}', "latest", "not a non-negative integer"),
        ("yesterday", "latest", "expected earliest, latest, an ISO timestamp"),
        ("2026-11-21T00:00:00", "latest", "no time zone"),
        ("earliest", '{"1": 999}', "beyond the end"),
    ],
)
def test_refusals(from_, to, message):
    with pytest.raises(BackfillRefused, match=message):
        r(from_, to)


def test_a_to_before_from_is_refused_even_when_both_resolve_to_the_same_offsets():
    def before_every_record(bootstrap, at, high):
        return tps({0: 100, 1: 0, 2: 50})  # both times precede the first record: same offsets

    with pytest.raises(BackfillRefused, match=r"'2026-01-01T00:00:00Z' is before from .*: swap"):
        r("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", before_every_record)
    rng = r("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", before_every_record)
    assert rng.records == 0


def test_parse_offsets_rejects_non_objects():
    with pytest.raises(BackfillRefused):
        parse_offsets("[1, 2]", "t")


def test_clip_to_live_position():
    rng = clip_to(r(), tps({0: 450, 1: 0}))
    assert rng.end == tps({0: 450, 1: 0, 2: 50})


def test_a_stream_over_several_topics_resolves_per_topic_partition():
    from riverdelta.backfill.replay import OffsetRange, range_lines
    from riverdelta.config.registry import TopicSource

    marks = {("a", 0): (0, 10), ("b", 0): (5, 8), ("b", 1): (0, 4)}
    source = TopicSource(("a", "b"))
    rng = resolve(source, "unused:0", '{"b": {"0": 6}}', "latest", watermarks=marks)
    assert rng.topics == ("a", "b")
    assert rng.start == {("a", 0): 0, ("b", 0): 6, ("b", 1): 0}
    assert rng.records == 10 + 2 + 4
    assert OffsetRange.from_dict(rng.to_dict()) == rng
    assert range_lines(rng.to_dict())[1] == "b partition 0: offsets [6, 8) = 2 record(s)"
    with pytest.raises(BackfillRefused, match="name the topic of each partition"):
        resolve(source, "unused:0", '{"0": 1}', "latest", watermarks=marks)
    pattern = TopicSource(pattern="b|c")
    assert parse_offsets('{"c": {"2": 3}}', pattern) == {("c", 2): 3}


def test_ranges_recorded_before_several_topics_still_read():
    from riverdelta.backfill.replay import OffsetRange, range_lines

    old = {"topic": "t", "start": {"0": 1}, "end": {"0": 4}}
    assert OffsetRange.from_dict(old).end == {("t", 0): 4}
    assert range_lines({"start": {"0": 1}, "end": {"0": 4}}) == [
        "partition 0: offsets [1, 4) = 3 record(s)"
    ]


def test_one_backfill_per_stream_with_a_heartbeat_lease(tmp_path, monkeypatch):
    import json

    from riverdelta.backfill import replay as backfill
    from riverdelta.config.settings import settings

    monkeypatch.setenv("RIVERDELTA_LAKE", str(tmp_path / "lake"))
    settings.cache_clear()
    try:
        backfill.acquire_lock("s", "run-1")
        backfill.acquire_lock("s", "run-1")  # the same run's next task
        with pytest.raises(BackfillRefused, match=r"already running.*run-1"):
            backfill.acquire_lock("s", "run-2")
        backfill.acquire_lock("t", "run-2")  # other streams are independent
        # A holder that stopped beating for longer than the lease is taken over.
        path = backfill._lock_path("s")
        held = json.loads(path.read_text())
        path.write_text(json.dumps({**held, "heartbeat": held["heartbeat"] - 601}))
        backfill.acquire_lock("s", "run-2")
        backfill.release_lock("s", "run-1")  # not the holder any more: no effect
        with pytest.raises(BackfillRefused):
            backfill.acquire_lock("s", "run-3")
        backfill.release_lock("s", "run-2")
        backfill.acquire_lock("s", "run-3")
    finally:
        settings.cache_clear()


@pytest.mark.parametrize(
    ("mode", "from_", "to", "limit", "message"),
    [
        ("replay", "earliest", "latest", None, "mode 'replay'"),
        ("rebuild", '{"0": 5}', "latest", None, "from must be 'earliest'"),
        ("rebuild", "earliest", "2026-11-21T00:00:00Z", None, "to 'latest'"),
        ("range", "earliest", "latest", 0, None),
        ("range", "earliest", "latest", -5, "must be positive"),
        ("range", "earliest", "latest", "ten", "not a number"),
    ],
)
def test_parameters_are_checked_before_kafka_is_asked(mode, from_, to, limit, message):
    from riverdelta.backfill.replay import check_params

    if message is None:
        assert check_params(mode, from_, to, limit) is None
    else:
        with pytest.raises(BackfillRefused, match=message):
            check_params(mode, from_, to, limit)
