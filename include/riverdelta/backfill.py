"""Backfills: turn an on-call request into a concrete offset range, refuse what cannot be honoured.

Every backfill first resolves ``from``/``to`` (earliest | latest | ISO timestamp |
per-partition offsets JSON) into ``{partition: [start, end)}`` with the Kafka
admin API, and refuses, before any table is touched, a request that would lose
or invent data. Ranges are half-open: ``end`` is the first offset *not* replayed.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from riverdelta.lake import ops_path

MODES = ("rebuild", "range")


class BackfillRefused(ValueError):
    """The request cannot be honoured; nothing was written."""


@dataclass(frozen=True)
class OffsetRange:
    topic: str
    start: dict[int, int]
    end: dict[int, int]  # exclusive
    first_timestamp: float | None = None
    last_timestamp: float | None = None

    @property
    def records(self) -> int:
        return sum(max(0, self.end[p] - self.start[p]) for p in self.start)

    def starting_offsets_json(self) -> str:
        return json.dumps({self.topic: {str(p): o for p, o in sorted(self.start.items())}})

    def ending_offsets_json(self) -> str:
        return json.dumps({self.topic: {str(p): o for p, o in sorted(self.end.items())}})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = {str(k): v for k, v in self.start.items()}
        d["end"] = {str(k): v for k, v in self.end.items()}
        d["records"] = self.records
        d["partitions"] = sorted(self.start)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OffsetRange:
        return cls(
            d["topic"],
            {int(k): v for k, v in d["start"].items()},
            {int(k): v for k, v in d["end"].items()},
            d.get("first_timestamp"),
            d.get("last_timestamp"),
        )


def parse_offsets(text: str, topic: str) -> dict[int, int]:
    """``{"0": 10, "1": 20}`` or Spark's ``{"topic": {"0": 10}}``; partitions as ints."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackfillRefused(
            f"malformed offsets JSON {text!r}: {exc.msg} at position {exc.pos}"
        ) from exc
    if isinstance(data, dict) and list(data) == [topic] and isinstance(data[topic], dict):
        data = data[topic]
    if not isinstance(data, dict) or not data:
        raise BackfillRefused(
            f'offsets JSON {text!r}: expected an object partition -> offset, e.g. {{"0": 42}}'
        )
    out = {}
    for p, o in data.items():
        try:
            part = int(p)
        except ValueError as exc:
            raise BackfillRefused(f"offsets JSON: partition {p!r} is not a number") from exc
        if not isinstance(o, int) or isinstance(o, bool) or o < 0:
            raise BackfillRefused(
                f"offsets JSON: offset {o!r} of partition {p} is not a non-negative integer"
            )
        out[part] = o
    return out


def _parse_time(text: str) -> float | None:
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        raise BackfillRefused(f"timestamp {text!r} has no time zone: add Z or +00:00")
    return ts.timestamp()


def offsets_for_time(
    bootstrap: str, topic: str, partitions: list[int], at: float, high: dict[int, int]
) -> dict[int, int]:
    """First offset per partition whose timestamp is >= ``at`` (the high watermark if none)."""
    from confluent_kafka import TopicPartition

    from riverdelta.health import _consumer

    consumer = _consumer(bootstrap)
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, int(at * 1000)) for p in partitions], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: (tp.offset if tp.offset >= 0 else high[tp.partition]) for tp in found}


def resolve(
    topic: str,
    bootstrap: str,
    from_: str = "earliest",
    to: str = "latest",
    *,
    watermarks: dict[int, tuple[int, int]] | None = None,
    time_lookup=offsets_for_time,
) -> OffsetRange:
    from riverdelta.health import watermarks as read_watermarks

    marks = watermarks if watermarks is not None else read_watermarks(bootstrap, topic)
    parts = sorted(marks)
    low = {p: marks[p][0] for p in parts}
    high = {p: marks[p][1] for p in parts}

    def side(text: str, default: dict[int, int], name: str) -> dict[int, int]:
        text = (text or "").strip()
        if text in ("", "earliest"):
            return dict(low)
        if text == "latest":
            return dict(high)
        if text.startswith("{"):
            given = parse_offsets(text, topic)
            unknown = sorted(set(given) - set(parts))
            if unknown:
                raise BackfillRefused(
                    f"{name}: unknown partition(s) {unknown} of {topic}; it has partitions {parts}"
                )
            return {p: given.get(p, default[p]) for p in parts}
        at = _parse_time(text)
        if at is None:
            raise BackfillRefused(
                f"{name} {text!r}: expected earliest, latest, an ISO timestamp (2026-11-21T10:00:00Z) "
                'or per-partition offsets JSON ({"0": 42})'
            )
        return time_lookup(bootstrap, topic, parts, at, high)

    start = side(from_, low, "from")
    end = side(to, high, "to")
    lost = {p: low[p] - start[p] for p in parts if start[p] < low[p]}
    if lost:
        where = ", ".join(
            f"partition {p}: {n} record(s) (offsets {start[p]}..{low[p] - 1})"
            for p, n in lost.items()
        )
        raise BackfillRefused(
            f"from-offsets below the earliest retained offsets of {topic}: {sum(lost.values())} record(s) "
            f"were deleted by retention and cannot be replayed ({where}). Start at the earliest retained "
            "offsets (from=earliest) and restore the lost range from another copy if you need it."
        )
    beyond = {p: end[p] for p in parts if end[p] > high[p]}
    if beyond:
        raise BackfillRefused(f"to-offsets beyond the end of {topic} ({beyond}; end is {high})")
    backwards = {p: (start[p], end[p]) for p in parts if end[p] < start[p]}
    if backwards:
        raise BackfillRefused(f"to is before from on partition(s) {backwards} (from, to)")
    return OffsetRange(topic, start, end)


def with_time_span(rng: OffsetRange, bootstrap: str) -> OffsetRange:
    """The range with the timestamps of its first and last records (for dry runs)."""
    from riverdelta.health import oldest_unprocessed_timestamps

    firsts = oldest_unprocessed_timestamps(
        bootstrap, rng.topic, {p: rng.start[p] for p in rng.start if rng.end[p] > rng.start[p]}
    )
    lasts = oldest_unprocessed_timestamps(
        bootstrap, rng.topic, {p: rng.end[p] - 1 for p in rng.start if rng.end[p] > rng.start[p]}
    )
    f = [t for t in firsts.values() if t is not None]
    ls = [t for t in lasts.values() if t is not None]
    return OffsetRange(
        rng.topic, rng.start, rng.end, min(f) if f else None, max(ls) if ls else None
    )


def clip_to(rng: OffsetRange, limit: dict[int, int]) -> OffsetRange:
    """Clip the range's end to ``limit`` (a live stream's committed offsets)."""
    end = {p: min(rng.end[p], limit.get(p, rng.start[p])) for p in rng.end}
    end = {p: max(end[p], rng.start[p]) for p in end}
    return OffsetRange(rng.topic, rng.start, end, rng.first_timestamp, rng.last_timestamp)


# --------------------------------------------------------------------------- one at a time


def _lock_path(stream: str) -> Path:
    return Path(ops_path("locks")) / f"backfill-{stream}.json"


def acquire_lock(stream: str, run_id: str, is_active=None) -> None:
    """Refuse a second backfill of the same stream while one runs.

    A lock spans several Airflow tasks (separate processes), so it is keyed by run
    id; ``is_active(run_id)`` tells whether its holder still runs (stale locks are
    taken over). Without it, a lock whose holder process is gone counts as stale.
    """
    path = _lock_path(stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = json.loads(path.read_text() or "{}")
            if held.get("run_id") == run_id:
                return
            stale = (
                not is_active(held.get("run_id"))
                if is_active is not None
                else held.get("host") == mine["host"]
                and not Path(f"/proc/{held.get('pid')}").exists()
            )
            if stale:
                path.unlink(missing_ok=True)  # its holder died without releasing it
                continue
            raise BackfillRefused(
                f"a backfill of {stream} is already running (run {held.get('run_id')}, pid "
                f"{held.get('pid')} on {held.get('host')}); wait for it to finish or fail"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        return


def release_lock(stream: str, run_id: str) -> None:
    path = _lock_path(stream)
    if path.exists() and json.loads(path.read_text() or "{}").get("run_id") == run_id:
        path.unlink(missing_ok=True)
