"""Backfills: turn an on-call request into a concrete offset range, refuse what cannot be honoured.

Every backfill first resolves ``from``/``to`` (earliest | latest | ISO timestamp |
per-partition offsets JSON) into ``{partition: [start, end)}`` with the Kafka
admin API, and refuses, before any table is touched, a request that would lose
or invent data. Ranges are half-open: ``end`` is the first offset *not* replayed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from riverdelta.config.registry import TopicSource
from riverdelta.errors import RiverdeltaError
from riverdelta.ops.health import TP, flatten, nest, offsets_for_time
from riverdelta.storage import files
from riverdelta.storage.lake import control_dir

MODES = ("rebuild", "range")


class BackfillRefused(RiverdeltaError, ValueError):
    """The request cannot be honoured; nothing was written."""


def _name(tp: TP) -> str:
    return f"{tp[0]} partition {tp[1]}"


@dataclass(frozen=True)
class OffsetRange:
    """A half-open range per topic-partition of a stream's source."""

    topics: tuple[str, ...]
    start: dict[TP, int]
    end: dict[TP, int]  # exclusive
    first_timestamp: float | None = None
    last_timestamp: float | None = None

    @property
    def records(self) -> int:
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.start)

    def starting_offsets_json(self) -> str:
        return json.dumps(nest(self.start))

    def ending_offsets_json(self) -> str:
        return json.dumps(nest(self.end))

    def to_dict(self) -> dict[str, Any]:
        return {
            "topics": list(self.topics),
            "start": nest(self.start),
            "end": nest(self.end),
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "records": self.records,
            "partitions": [list(tp) for tp in sorted(self.start)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OffsetRange:
        if "topic" in d:  # written before streams had several topics: {partition: offset}
            topic = d["topic"]
            d = {**d, "topics": [topic]}
            d["start"], d["end"] = ({topic: d[k]} for k in ("start", "end"))
        return cls(
            tuple(d["topics"]),
            flatten(d["start"]),
            flatten(d["end"]),
            d.get("first_timestamp"),
            d.get("last_timestamp"),
        )


def parse_offsets(text: str, source: TopicSource | str) -> dict[TP, int]:
    """Spark's ``{"topic": {"0": 10}}``, or ``{"0": 10}`` for a stream of one named topic."""
    source = TopicSource.of(source)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackfillRefused(
            f"malformed offsets JSON {text!r}: {exc.msg} at position {exc.pos}"
        ) from exc
    if not isinstance(data, dict) or not data:
        raise BackfillRefused(
            f'offsets JSON {text!r}: expected an object partition -> offset, e.g. {{"0": 42}}'
        )
    if not all(isinstance(v, dict) for v in data.values()):
        if source.pattern is not None or len(source.topics) != 1:
            raise BackfillRefused(
                f"offsets JSON {text!r}: this stream reads {source}: name the topic of each "
                'partition, e.g. {"<topic>": {"0": 42}}'
            )
        data = {source.topics[0]: data}
    out: dict[TP, int] = {}
    for topic, parts in data.items():
        if not source.matches(topic):
            raise BackfillRefused(
                f"offsets JSON: topic {topic!r} is not read by this stream ({source})"
            )
        if not isinstance(parts, dict):
            raise BackfillRefused(f"offsets JSON: {topic!r} must map partition -> offset")
        for p, o in parts.items():
            try:
                part = int(p)
            except ValueError as exc:
                raise BackfillRefused(f"offsets JSON: partition {p!r} is not a number") from exc
            if not isinstance(o, int) or isinstance(o, bool) or o < 0:
                raise BackfillRefused(
                    f"offsets JSON: offset {o!r} of partition {p} is not a non-negative integer"
                )
            out[(topic, part)] = o
    return out


def _parse_time(text: str) -> float | None:
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None:
        raise BackfillRefused(f"timestamp {text!r} has no time zone: add Z or +00:00")
    return ts.timestamp()


def resolve(
    source: TopicSource | str,
    bootstrap: str,
    from_: str = "earliest",
    to: str = "latest",
    *,
    watermarks: dict[TP, tuple[int, int]] | None = None,
    time_lookup=offsets_for_time,
) -> OffsetRange:
    from riverdelta.ops.health import watermarks as read_watermarks

    source = TopicSource.of(source)
    marks = watermarks if watermarks is not None else read_watermarks(bootstrap, source)
    parts = sorted(marks)
    low = {tp: marks[tp][0] for tp in parts}
    high = {tp: marks[tp][1] for tp in parts}

    def side(text: str, default: dict[TP, int], name: str) -> dict[TP, int]:
        text = (text or "").strip()
        if text in ("", "earliest"):
            return dict(low)
        if text == "latest":
            return dict(high)
        if text.startswith("{"):
            given = parse_offsets(text, source)
            unknown = sorted(set(given) - set(parts))
            if unknown:
                raise BackfillRefused(
                    f"{name}: unknown partition(s) {[_name(tp) for tp in unknown]} of {source}; "
                    f"it has {[_name(tp) for tp in parts]}"
                )
            return {tp: given.get(tp, default[tp]) for tp in parts}
        at = _parse_time(text)
        if at is None:
            raise BackfillRefused(
                f"{name} {text!r}: expected earliest, latest, an ISO timestamp (2026-11-21T10:00:00Z) "
                'or per-partition offsets JSON ({"0": 42})'
            )
        return time_lookup(bootstrap, at, high)

    t_from, t_to = (_parse_time((t or "").strip()) for t in (from_, to))
    if t_from is not None and t_to is not None and t_to < t_from:
        # Both may resolve to the same offsets (before the first record, say): an empty
        # range that "succeeds" would hide the typo.
        raise BackfillRefused(f"to {to!r} is before from {from_!r}: swap them")
    start = side(from_, low, "from")
    end = side(to, high, "to")
    _refuse_impossible(source, start, end, low, high)
    return OffsetRange(tuple(sorted({t for t, _ in parts})), start, end)


def _refuse_impossible(
    source: TopicSource,
    start: dict[TP, int],
    end: dict[TP, int],
    low: dict[TP, int],
    high: dict[TP, int],
) -> None:
    """A range must lie within what Kafka still holds, and run forwards."""
    lost = {tp: low[tp] - start[tp] for tp in start if start[tp] < low[tp]}
    if lost:
        where = ", ".join(
            f"{_name(tp)}: {n} record(s) (offsets {start[tp]}..{low[tp] - 1})"
            for tp, n in lost.items()
        )
        raise BackfillRefused(
            f"from-offsets below the earliest retained offsets of {source}: {sum(lost.values())} record(s) "
            f"were deleted by retention and cannot be replayed ({where}). Start at the earliest retained "
            "offsets (from=earliest) and restore the lost range from another copy if you need it."
        )
    beyond = {_name(tp): end[tp] for tp in end if end[tp] > high[tp]}
    if beyond:
        ends = {_name(tp): hi for tp, hi in high.items()}
        raise BackfillRefused(f"to-offsets beyond the end of {source} ({beyond}; end is {ends})")
    backwards = {_name(tp): (start[tp], end[tp]) for tp in start if end[tp] < start[tp]}
    if backwards:
        raise BackfillRefused(f"to is before from on {backwards} (from, to)")


def with_time_span(rng: OffsetRange, bootstrap: str) -> OffsetRange:
    """The range with the timestamps of its first and last records (for dry runs)."""
    from riverdelta.ops.health import oldest_unprocessed_timestamps

    filled = [tp for tp in rng.start if rng.end[tp] > rng.start[tp]]
    firsts = oldest_unprocessed_timestamps(bootstrap, {tp: rng.start[tp] for tp in filled})
    lasts = oldest_unprocessed_timestamps(bootstrap, {tp: rng.end[tp] - 1 for tp in filled})
    f = [t for t in firsts.values() if t is not None]
    ls = [t for t in lasts.values() if t is not None]
    return OffsetRange(
        rng.topics, rng.start, rng.end, min(f) if f else None, max(ls) if ls else None
    )


def clip_to(rng: OffsetRange, limit: dict[TP, int]) -> OffsetRange:
    """Clip the range's end to ``limit`` (a live stream's committed offsets)."""
    end = {tp: min(rng.end[tp], limit.get(tp, rng.start[tp])) for tp in rng.end}
    end = {tp: max(end[tp], rng.start[tp]) for tp in end}
    return OffsetRange(rng.topics, rng.start, end, rng.first_timestamp, rng.last_timestamp)


# --------------------------------------------------------------------------- one at a time


def _lock_path(stream: str) -> Path:
    return control_dir("locks") / f"backfill-{stream}.json"


LOCK_LEASE_SECONDS = 600.0


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def acquire_lock(stream: str, run_id: str, lease: float = LOCK_LEASE_SECONDS) -> None:
    """Refuse a second backfill of the same stream while one runs.

    A backfill spans several Airflow tasks (separate processes, possibly separate
    workers), so the lock is keyed by run id and kept alive by ``heartbeat``; a
    lock whose heartbeat is older than ``lease`` seconds belongs to a run that died
    without releasing it and is taken over.
    """
    path = _lock_path(stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = _read_lock(path)
            if held.get("run_id") == run_id:
                heartbeat(stream, run_id)
                return
            age = time.time() - float(held.get("heartbeat", 0))
            if age > lease:
                path.unlink(missing_ok=True)  # its holder died without releasing it
                continue
            raise BackfillRefused(
                f"a backfill of {stream} is already running (run {held.get('run_id')}, last "
                f"heartbeat {age:.0f}s ago); wait for it to finish or fail"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump({**mine, "heartbeat": time.time()}, fh)
        return


def heartbeat(stream: str, run_id: str) -> None:
    path = _lock_path(stream)
    held = _read_lock(path)
    if held.get("run_id") == run_id:
        files.write_atomic(path, json.dumps({**held, "heartbeat": time.time()}))


def running_backfill(stream: str, lease: float = LOCK_LEASE_SECONDS) -> dict[str, Any] | None:
    """The lock of the backfill of ``stream`` that is running now (heartbeat within the lease)."""
    held = _read_lock(_lock_path(stream))
    if held and time.time() - float(held.get("heartbeat", 0)) <= lease:
        return held
    return None


def release_lock(stream: str, run_id: str) -> None:
    path = _lock_path(stream)
    if path.exists() and _read_lock(path).get("run_id") == run_id:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the run
#
# A backfill is four steps, each an Airflow task (a plan dict travels between them):
# plan (resolve + refuse + lock) -> replay (spark-submit, AvailableNow, own checkpoint)
# -> audit (rebuild: validate the fresh tables, unpublished) -> hand_over (rebuild:
# move the live stream onto the fresh tables and checkpoint, validate, publish all).
# The last step of a mode records the outcome in the ops history and releases the lock;
# any failing step does the same with outcome=failed.

PARAMS = ("mode", "from", "to", "max_offsets_per_trigger", "dry_run")


def _spec(stream: str):
    from riverdelta.config.registry import load_registry

    return load_registry().get(stream)


def _bootstrap() -> str:
    from riverdelta.config.settings import settings

    return settings().kafka_bootstrap


def _tag(run_id: str) -> str:
    """A short, path-safe id of the run, plus uniqueness for reruns of the same run id."""
    import hashlib

    return f"{time.strftime('%Y%m%dT%H%M%S')}-{hashlib.sha1(run_id.encode()).hexdigest()[:6]}"


def check_params(mode: str, from_: str, to: str, max_offsets: Any) -> int | None:
    if mode not in MODES:
        raise BackfillRefused(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "rebuild" and ((from_ or "earliest") != "earliest" or (to or "latest") != "latest"):
        raise BackfillRefused(
            "rebuild replays every retained record into fresh tables: from must be 'earliest' and "
            "to 'latest'. To re-ingest part of the topic into the live tables, use mode=range."
        )
    if max_offsets in (None, "", 0):
        return None
    try:
        limit = int(max_offsets)
    except (TypeError, ValueError):
        raise BackfillRefused(f"max offsets per trigger {max_offsets!r} is not a number") from None
    if limit < 1:
        raise BackfillRefused(f"max offsets per trigger must be positive, got {limit}")
    return limit


@contextlib.contextmanager
def _refusal_recorded(stream: str, mode: str, actor: str) -> Iterator[None]:
    """Record a ``BackfillRefused`` raised inside in the ops history, then let it through."""
    from riverdelta.ops import state as ops

    try:
        yield
    except BackfillRefused as exc:
        ops.record(stream, "backfill", outcome="refused", actor=actor, mode=mode, reason=str(exc))
        raise


def plan(
    stream: str,
    *,
    mode: str,
    from_: str = "earliest",
    to: str = "latest",
    max_offsets_per_trigger: Any = None,
    dry_run: bool = False,
    run_id: str,
    actor: str = "",
) -> dict[str, Any]:
    """Resolve the request into offsets, refuse what cannot be honoured, take the lock.

    Refusals raise ``BackfillRefused`` before any table is touched, and are recorded
    in the ops history with their reason.
    """
    from riverdelta.ops import state as ops
    from riverdelta.storage.lake import checkpoint_path, lake_root, live_checkpoint, stream_location

    with _refusal_recorded(stream, mode, actor):
        spec = _spec(stream)
        limit = check_params(mode, from_, to, max_offsets_per_trigger)
        rng = resolve(spec.source, _bootstrap(), from_, to)
        clipped = None
        if mode == "range":
            # The live stream ingests what it has not committed yet; replaying beyond its
            # committed offsets would write those records twice.
            from riverdelta.ops.health import read_checkpoint

            state = read_checkpoint(live_checkpoint(spec.name))
            committed = dict(state.end_offsets) if state else {}
            bounded = clip_to(rng, committed)
            if bounded.end != rng.end:
                clipped = {"requested_end": nest(rng.end)}
            rng = bounded
        rng = with_time_span(rng, _bootstrap())
    tag = _tag(run_id)
    if mode == "rebuild":
        tables_root = f"{lake_root().rstrip('/')}/tables@{tag}"
        checkpoint = checkpoint_path(spec.name, f"rebuild-{tag}")
    else:
        tables_root = stream_location(spec.name)["tables_root"]
        checkpoint = checkpoint_path(spec.name, f"range-{tag}")
    result = {
        "stream": spec.name,
        "mode": mode,
        "run_id": run_id,
        "actor": actor,
        "dry_run": bool(dry_run),
        "request": {"from": from_, "to": to, "max_offsets_per_trigger": limit},
        "range": rng.to_dict(),
        "clipped_to_live": clipped,
        "tables_root": tables_root,
        "checkpoint": checkpoint,
        "planned_at": time.time(),
    }
    if dry_run:
        ops.record(spec.name, "backfill", outcome="dry_run", actor=actor, **_summary(result))
        return result
    with _refusal_recorded(spec.name, mode, actor):
        acquire_lock(spec.name, run_id)
    ops.record(spec.name, "backfill_planned", actor=actor, **_summary(result))
    return result


def _summary(p: dict[str, Any]) -> dict[str, Any]:
    rng = p["range"]
    return {
        "mode": p["mode"],
        "run_id": p["run_id"],
        "topics": rng["topics"],
        "partitions": rng["partitions"],
        "start": rng["start"],
        "end": rng["end"],
        "records": rng["records"],
        "first_timestamp": rng.get("first_timestamp"),
        "last_timestamp": rng.get("last_timestamp"),
        "clipped_to_live": p.get("clipped_to_live"),
        "tables_root": p["tables_root"],
    }


def range_lines(d: dict[str, Any]) -> list[str]:
    """One line per topic-partition of a range (or of a history row that holds one)."""

    def offsets(side: dict[str, Any]) -> dict[TP, int]:
        # History rows from before several topics per stream hold {partition: offset}.
        flat = all(not isinstance(v, dict) for v in side.values())
        return {("", int(k)): int(v) for k, v in side.items()} if flat else flatten(side)

    start, end = offsets(d.get("start") or {}), offsets(d.get("end") or {})
    return [
        f"{(topic + ' ') if topic else ''}partition {part}: offsets [{lo}, {end[(topic, part)]}) "
        f"= {max(0, end[(topic, part)] - lo)} record(s)"
        for (topic, part), lo in sorted(start.items())
    ]


def describe(p: dict[str, Any]) -> str:
    """The dry-run report an on-call engineer reads."""
    from datetime import UTC

    rng = p["range"]

    def when(t: float | None) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat() if t else "-"

    lines = [
        f"{p['mode']} backfill of {p['stream']} ({', '.join(rng['topics'])}): "
        f"{rng['records']} record(s), "
        f"event times {when(rng.get('first_timestamp'))} .. {when(rng.get('last_timestamp'))}"
    ]
    lines += [f"  {line}" for line in range_lines(rng)]
    if p.get("clipped_to_live"):
        lines.append(
            "  (end clipped to the live stream's committed offsets; it ingests the rest itself)"
        )
    lines.append(f"  into {p['tables_root']}")
    return "\n".join(lines)


def finish(p: dict[str, Any], outcome: str, **detail: Any) -> None:
    from riverdelta.ops import state as ops

    ops.record(
        p["stream"], "backfill", outcome=outcome, actor=p.get("actor", ""), **_summary(p), **detail
    )
    release_lock(p["stream"], p["run_id"])


def _batch_counts(txn_app_id: str) -> dict[str, Any]:
    """Totals of the ingest_batches rows one replay wrote."""
    from riverdelta.storage import roots as storage
    from riverdelta.storage.lake import ops_path
    from riverdelta.stream.job import BATCHES_TABLE

    path = ops_path(BATCHES_TABLE)
    if not storage.is_delta_table(path):
        return {}
    table = storage.delta_table(path).to_pyarrow_table()
    rows = [r for r in table.to_pylist() if r["app_id"] == txn_app_id]
    keys = ("records_in", "silver", "duplicates", "quarantined", "already_present", "resolved")
    totals: dict[str, Any] = {k: sum(int(r.get(k) or 0) for r in rows) for k in keys}
    totals["batches"] = len(rows)
    return totals


def replay(p: dict[str, Any]) -> dict[str, Any]:
    """Run the ingest app with ``Trigger.AvailableNow`` over the planned range (foreground)."""
    import subprocess
    import threading

    from riverdelta.airflow.env import ensure_airflow_env
    from riverdelta.config.settings import settings
    from riverdelta.launch.procs import tail
    from riverdelta.launch.submit import build_command, ingest_args, submit_env
    from riverdelta.stream.job import IngestMode

    rng = OffsetRange.from_dict(p["range"])
    started = time.time()
    if rng.records == 0:
        return {"records": 0, "seconds": 0.0, "rows_per_second": None, "counts": {}}
    ensure_airflow_env()
    args = ingest_args(
        p["stream"],
        IngestMode.REPLAY,
        starting=rng.starting_offsets_json(),
        max_offsets_per_trigger=p["request"].get("max_offsets_per_trigger"),
        checkpoint=p["checkpoint"],
        tables_root=p["tables_root"],
        until=rng.ending_offsets_json() if p["mode"] == "range" else None,
        skip_present=p["mode"] == "range",
    )
    cmd = build_command(args, name=f"riverdelta-{p['stream']}-backfill")
    log_file = settings().log_dir / f"backfill-{p['stream']}-{Path(p['checkpoint']).name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()

    def keep_lock() -> None:
        while not done.wait(30):
            heartbeat(p["stream"], p["run_id"])

    threading.Thread(target=keep_lock, daemon=True).start()
    try:
        with log_file.open("ab") as out:
            rc = subprocess.run(
                cmd, env=submit_env(), stdout=out, stderr=subprocess.STDOUT
            ).returncode
    finally:
        done.set()
    if rc != 0:
        raise RuntimeError(
            f"the replay driver exited with {rc}; log {log_file}:\n{tail(log_file, 40)}"
        )
    seconds = time.time() - started
    from riverdelta.stream.job import checkpoint_marker

    txn_app_id = (checkpoint_marker(p["checkpoint"]) or {})["app_id"]
    counts = _batch_counts(txn_app_id)
    # Rows per second over what the replay read (skipped records included: it read them).
    read = counts.get("records_in", 0) + counts.get("already_present", 0)
    return {
        "records": rng.records,
        "seconds": round(seconds, 1),
        "rows_per_second": round(read / seconds, 1) if seconds else None,
        "app_id": txn_app_id,  # the key backfill records in the ops history have
        "log": str(log_file),
        "counts": counts,
    }


def audit(p: dict[str, Any]) -> dict[str, int]:
    """Validate every fresh table of a rebuild with its suite; publish nothing yet."""
    from riverdelta.quality.gate import validate_table
    from riverdelta.storage.lake import TableSet

    spec = _spec(p["stream"])
    tables = TableSet.for_stream(spec, p["tables_root"])
    versions = {}
    for layer, table in spec.table_names().items():
        heartbeat(p["stream"], p["run_id"])
        result = validate_table(table, path=tables[layer], full=True, publish_on_pass=False)
        versions[table] = result["to_version"]
    return versions


def _wait(predicate, timeout: float, what: str, stream: str, run_id: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        heartbeat(stream, run_id)
        time.sleep(interval)


def _query_started(deployment: dict[str, Any] | None) -> bool:
    """The driver logged that its query started (local/standalone drivers log locally)."""
    log = Path((deployment or {}).get("log") or "")
    if not log.is_file():
        return True  # cluster drivers: the checkpoint alone tells
    with log.open("rb") as fh:
        fh.seek(int((deployment or {}).get("log_offset") or 0))
        return b"riverdelta.stream.ingest: started" in fh.read()


def hand_over(p: dict[str, Any], audited: dict[str, int], timeout: float = 600.0) -> dict[str, Any]:
    """Move the live stream onto the rebuilt tables; validate and publish them together.

    The live driver is stopped (it finishes nothing half-way: every batch is
    idempotent), the stream's location is switched to the fresh tables and the
    replay's checkpoint, and a live driver starts on that checkpoint: it continues
    from the replay's end offsets, so nothing is skipped or doubled. Readers keep
    reading the old tables' validated versions until every fresh table is validated
    up to the live position, then all pointers move at once.
    """
    from riverdelta.ops import control
    from riverdelta.ops import state as ops
    from riverdelta.ops.health import watermarks

    stream, run_id = p["stream"], p["run_id"]
    spec = _spec(stream)
    replay_batch = _last_batch(p["checkpoint"])
    resumed_at = None
    with control.pause(stream, by=run_id) as paused:
        # Stop position of the old driver: the new one must get at least this far.
        target = {tp: hi for tp, (_, hi) in watermarks(_bootstrap(), spec.source).items()}
        should_run = control.move(stream, p["tables_root"], p["checkpoint"], by=run_id)
        if should_run:
            deployment = control.resume(stream)
            resumed_at = _await_resumed(p, deployment, target, replay_batch, timeout)
    published = _publish_rebuilt(p, spec, audited)
    ops.record(
        stream,
        "restart" if should_run else "relocate",
        actor=p.get("actor", ""),
        reason="backfill hand-over",
        tables_root=p["tables_root"],
        checkpoint=p["checkpoint"],
    )
    return {
        "was_running": paused.was_running,
        "live_paused_seconds": round(resumed_at - paused.paused_at, 1) if resumed_at else None,
        "published": published,
    }


def _last_batch(checkpoint: str) -> int:
    """The checkpoint's last committed batch id, -1 before the first."""
    from riverdelta.ops.health import read_checkpoint

    end = read_checkpoint(checkpoint)
    batch = end.last_committed_batch if end else None
    return -1 if batch is None else batch


def _await_resumed(
    p: dict[str, Any],
    deployment: dict[str, Any],
    target: dict[TP, int],
    replay_batch: int,
    timeout: float,
) -> float:
    """Wait for the new live driver to ingest again, then to pass ``target``; when it resumed."""
    from riverdelta.ops.health import read_checkpoint

    def caught_up():
        cp = read_checkpoint(p["checkpoint"])
        ends = dict(cp.end_offsets) if cp else {}
        return all(ends.get(part, -1) >= off for part, off in target.items())

    def resumed():
        # Ingesting again: a batch after the replay's, or (nothing arrived during the
        # switch) the new driver's query is up on an already caught-up checkpoint.
        cp = read_checkpoint(p["checkpoint"])
        if cp is not None and (cp.last_committed_batch or -1) > replay_batch:
            return True
        return _query_started(deployment) and caught_up()

    stream, run_id = p["stream"], p["run_id"]
    _wait(resumed, timeout, "the live stream resuming after hand-over", stream, run_id)
    resumed_at = time.time()
    _wait(caught_up, timeout, "the live stream catching up", stream, run_id)
    return resumed_at


def _publish_rebuilt(p: dict[str, Any], spec, audited: dict[str, int]) -> dict[str, int]:
    """Validate every fresh table from its audited version on, then publish them at once."""
    from riverdelta.quality.gate import validate_table
    from riverdelta.quality.publications import publish_many
    from riverdelta.storage.lake import TableSet

    tables = TableSet.for_stream(spec, p["tables_root"])
    entries = {}
    for layer, table in spec.table_names().items():
        heartbeat(p["stream"], p["run_id"])
        result = validate_table(
            table, path=tables[layer], publish_on_pass=False, since_version=audited.get(table)
        )
        entries[table] = (tables[layer], result["to_version"])
    publish_many(entries, by=p["run_id"])
    return {t: v for t, (_, v) in entries.items()}


# --------------------------------------------------------------------------- from a shell


def follow_backfill(
    stream: str, conf: dict[str, Any], *, timeout: float = 3600.0, out=print
) -> int:
    """Trigger ``backfill_<stream>`` through the REST API (JWT) and follow it; 0 on success."""
    from urllib.parse import quote

    from riverdelta.airflow.api import ApiClient
    from riverdelta.ops import state as ops

    _spec(stream)  # an unknown stream fails here, before Airflow is asked anything
    dag_id = f"backfill_{stream}"
    api = ApiClient()
    api.wait_for_dag(dag_id)
    run_id = api.trigger(dag_id, conf)
    out(f"triggered {dag_id} run {run_id}")
    base = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
    seen: dict[str, str] = {}
    started = time.monotonic()
    state = "queued"
    while time.monotonic() - started < timeout:
        for ti in api.call("GET", f"{base}/taskInstances").get("task_instances", []):
            if ti.get("state") and seen.get(ti["task_id"]) != ti["state"]:
                seen[ti["task_id"]] = ti["state"]
                out(f"  [{time.monotonic() - started:6.0f}s] {ti['task_id']}: {ti['state']}")
        state = api.call("GET", base)["state"]
        if state in ("success", "failed"):
            break
        time.sleep(3)
    else:
        out(f"{dag_id} run {run_id} still {state} after {timeout:.0f}s; follow it in the UI")
        return 1
    mine = [r for r in ops.history(stream, "backfill") if r["detail"].get("run_id") == run_id] or [
        r for r in ops.history(stream, "backfill") if r["actor"].endswith(run_id)
    ]
    if mine:
        d = mine[-1]["detail"]
        out(f"outcome: {mine[-1]['outcome']}")
        if d.get("reason") or d.get("error"):
            out(f"  why: {d.get('reason') or d.get('error')}")
        if "records" in d:
            out(f"  records in range: {d['records']}")
            for line in range_lines(d):
                out(f"    {line}")
        if d.get("replay"):
            r = d["replay"]
            out(
                f"  replay: {r.get('seconds')} s, {r.get('rows_per_second')} rows/s, {r.get('counts')}"
            )
        if d.get("hand_over"):
            out(f"  live stream paused {d['hand_over'].get('live_paused_seconds')} s at hand-over")
    out(f"{dag_id} run {run_id}: {state}")
    return 0 if state == "success" else 1
