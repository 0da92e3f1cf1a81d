"""Gold off the ingest's critical path: a driver thread that rewrites touched windows.

The ingest batch only *announces* which gold windows its new silver rows touched
(collected in the batch's one statistics job) and returns. A refresher thread in
the same driver wakes every ``gold_trigger``, takes every window announced since
its last pass, recomputes exactly those windows from silver (event-time ranges, so
Delta's data skipping reads only the files that can hold them) and writes them with
``replaceWhere`` on ``window_start``. No MERGE materialises its source, nothing
re-reads silver ± a watermark, and several batches announced during one pass cost
one rewrite.

Consistency marker (what the quality gate's ``gold_matches_silver`` reads): each
gold write carries Delta's txn (app id = the ingest's, version = the newest batch
it covers). A pass starts only after those batches committed silver and reads a
newer silver snapshot, so every silver row of that app with ``_batch_id <=`` the
txn version is in gold; windows that also hold newer rows are "pending" to the
check, as before. A crash loses only announcements, never rows: on start the
refresher re-announces the windows of this app's silver rows newer than gold's
txn version (one filtered read, pruned by ``_batch_id`` statistics).

``updated_at`` is the newest Kafka timestamp among the window's rows: deterministic,
so rewriting an unchanged window writes identical rows.

Why a thread and not a second streaming query over silver (a Delta source): a
second query needs a second checkpoint that a rebuild hand-over must move too,
and its offsets say nothing the quality gate can map to silver rows; the thread
keeps the ingest's txn as the one marker, and its cost follows the touched
windows, not the table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from riverdelta.config.registry import GoldSpec, StreamSpec, parse_duration
from riverdelta.stream import transforms as T

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("riverdelta.stream.gold")

POOL = "gold"  # FAIR scheduler pool: gold jobs share the cores with the ingest, never block it
# Beyond this many windows one range predicate is cheaper than an IN list (and a
# rebuild's initial pass touches every window).
MAX_LISTED_WINDOWS = 64


def window_seconds(gold: GoldSpec) -> int:
    return int(parse_duration(gold.window).total_seconds())


def window_bucket(et: Column, seconds: int) -> Column:
    """The tumbling window an event time falls in, as ``window_start`` in epoch seconds."""
    from pyspark.sql import functions as F

    return F.floor(F.unix_micros(et) / F.lit(seconds * 1_000_000)) * F.lit(seconds)


def in_time_ranges(column: str, ranges: list[tuple[int, int]]) -> Column:
    """Rows whose ``column`` falls in one of the [lo, hi) epoch-second ranges.

    The column itself is compared with constant timestamps (``timestamp_seconds``
    of a literal folds to one), so Delta's per-file statistics skip every file
    outside the ranges; a function of the column would defeat that. Epoch seconds
    throughout: the driver's local time zone cannot shift a range.
    """
    from pyspark.sql import functions as F

    col = F.col(column)
    cond = None
    for lo, hi in ranges:
        c = (col >= F.timestamp_seconds(F.lit(lo))) & (col < F.timestamp_seconds(F.lit(hi)))
        cond = c if cond is None else cond | c
    return cond if cond is not None else F.lit(False)


def _windows_predicate(column: str, starts: list[int], size: int) -> tuple[Column, str]:
    """(filter on silver's event time, replaceWhere SQL on gold's window_start)."""
    lo, hi = min(starts), max(starts)
    if len(starts) > MAX_LISTED_WINDOWS:
        where = f"unix_seconds(window_start) BETWEEN {lo} AND {hi}"
        return in_time_ranges(column, [(lo, hi + size)]), where
    listed = ", ".join(str(s) for s in starts)
    where = f"unix_seconds(window_start) IN ({listed})"
    return in_time_ranges(column, [(s, s + size) for s in starts]), where


def recompute(silver: DataFrame, spec: StreamSpec, gold: GoldSpec, starts: list[int]):
    """Gold rows of exactly the windows ``starts`` (epoch seconds), from ``silver``, in one pass."""
    from pyspark.sql import functions as F

    cond, where = _windows_predicate(spec.event_time_column, starts, window_seconds(gold))
    stamp = {"updated_at": F.max("kafka_timestamp")}
    return T.aggregate_gold(silver.where(cond), spec, gold, extra=stamp), where


class GoldRefresher:
    """One per ingest job in a driver: announced windows in, gold rewrites out."""

    def __init__(
        self,
        spark: SparkSession,
        spec: StreamSpec,
        tables: dict[str, str],
        txn_app_id: str,
        interval: float,
        retry,  # delta_sink.retry_conflicts (passed in: batch imports this module)
        lock: threading.Lock,
        sinks: dict | None = None,  # gold name -> sink.KafkaSink (live drivers only)
    ) -> None:
        self.spark, self.spec, self.tables, self.txn_app_id = spark, spec, tables, txn_app_id
        self.interval, self._retry, self._write_lock = interval, retry, lock
        self.sinks = dict(sinks or {})
        self._pending: dict[str, set[int]] = {g.name: set() for g in spec.gold}
        self._pending_batch: int | None = None
        self.covered_batch: int | None = None  # newest batch gold reflects (txn version)
        self.last_pass: dict[str, float] = {}
        self.error: BaseException | None = None
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self._flushing = 0
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- intake

    def announce(self, batch_id: int, windows: dict[str, Iterable[int]]) -> None:
        with self._cv:
            for name, starts in windows.items():
                self._pending[name].update(int(s) for s in starts)
            if self._pending_batch is None or batch_id > self._pending_batch:
                self._pending_batch = batch_id
            self._cv.notify_all()

    def start(self) -> None:
        if not self.spec.gold or self._thread is not None:
            return
        try:
            for sink in self.sinks.values():
                sink.open()
        except Exception as exc:  # the ingest's next batch fails with it: the stream's error
            log.exception("gold %s: a Kafka sink did not open", self.spec.name)
            self.error = exc
            return
        self._recover()
        self._thread = threading.Thread(
            target=self._run, name=f"gold-{self.spec.name}", daemon=True
        )
        self._thread.start()

    def _recover(self) -> None:
        """Re-announce windows of this app's silver rows that gold does not reflect yet."""
        from pyspark.sql import functions as F

        from riverdelta.storage import roots as storage

        silver = self.tables["silver"]
        try:
            dt = storage.delta_table(silver)
        except Exception:  # no silver yet: nothing to recover
            return
        done = [self._gold_txn(g) for g in self.spec.gold]
        # A Kafka sink behind gold (killed between the gold write and its commit) has
        # its windows re-announced too: gold's rewrite is then skipped (same txn) and
        # the sink sends what changed since its last committed marker.
        done += [s.resume_after() for s in self.sinks.values()]
        floor = min((d if d is not None else -1) for d in done)
        newest = dt.transaction_version(self.txn_app_id)
        if newest is None or newest <= floor:
            self.covered_batch = None if newest is None else int(newest)
            return
        rows = (
            self.spark.read.format("delta")
            .load(silver)
            .where((F.col("_app_id") == self.txn_app_id) & (F.col("_batch_id") > F.lit(floor)))
        )
        et = F.col(self.spec.event_time_column)
        found = rows.agg(
            *(
                F.collect_set(window_bucket(et, window_seconds(g))).alias(g.name)
                for g in self.spec.gold
            )
        ).first()
        windows = {g.name: found[g.name] or [] for g in self.spec.gold}
        log.info(
            "gold %s: re-announcing batches %s..%s after a restart",
            self.spec.name,
            floor + 1,
            newest,
        )
        self.announce(int(newest), windows)

    def _gold_txn(self, gold: GoldSpec) -> int | None:
        from riverdelta.storage import roots as storage

        try:
            v = storage.delta_table(self.tables[f"gold_{gold.name}"]).transaction_version(
                self.txn_app_id
            )
        except Exception:
            return None
        return None if v is None else int(v)

    # ----------------------------------------------------------------- the pass

    def _run(self) -> None:
        self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", POOL)
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._stop or self._pending_batch is not None, self.interval
                )
                if self._pending_batch is None:
                    if self._stop:
                        return
                    continue
                batch, self._pending_batch = self._pending_batch, None
                windows = {k: sorted(v) for k, v in self._pending.items()}
                self._pending = {g.name: set() for g in self.spec.gold}
                self._busy = True
            started = time.monotonic()
            try:
                self._refresh(batch, windows)
                self.covered_batch = batch
            except BaseException as exc:  # the ingest thread re-raises it at its next batch
                log.exception("gold %s: refresh of batch %s failed", self.spec.name, batch)
                self.error = exc
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()
                # The trigger: at most one pass per interval, unless someone waits for it;
                # and never more than a third of the time, so under a heavy load gold
                # slows down (and coalesces more batches per pass) instead of taking the
                # cores from the ingest.
                pause = max(self.interval, 2 * (time.monotonic() - started))
                self._cv.wait_for(lambda: self._stop or self._flushing, pause)

    def _refresh(self, batch: int, windows: dict[str, list[int]]) -> None:
        for gold in self.spec.gold:
            starts = windows.get(gold.name) or []
            if not starts:  # a batch without new rows touches no window of any gold
                continue
            path = self.tables[f"gold_{gold.name}"]
            t = time.monotonic()

            def write(gold=gold, starts=starts, path=path) -> None:
                from delta.tables import DeltaTable

                silver = self.spark.read.format("delta").load(self.tables["silver"])
                rows, where = recompute(silver, self.spec, gold, starts)
                writer = (
                    rows.write.format("delta")
                    .option("txnAppId", self.txn_app_id)
                    .option("txnVersion", batch)
                )
                with self._write_lock:
                    if DeltaTable.isDeltaTable(self.spark, path):
                        writer.mode("overwrite").option("replaceWhere", where).save(path)
                    else:
                        writer.mode("append").save(path)

            self._retry(write, f"gold {gold.name} up to batch {batch}")
            self.last_pass[gold.name] = round(time.monotonic() - t, 3)
            log.info(
                "gold %s: %d window(s) up to batch %s in %.2fs",
                gold.name,
                len(starts),
                batch,
                self.last_pass[gold.name],
            )
            sink = self.sinks.get(gold.name)
            if sink is not None:
                t = time.monotonic()
                sent = sink.send(batch, starts)
                log.info(
                    "gold %s: kafka sink %s: %s record(s) of batch %s committed in %.2fs",
                    gold.name,
                    sink.sink.topic,
                    "no" if sent is None else sent,
                    batch,
                    time.monotonic() - t,
                )

    # ----------------------------------------------------------------- waiting

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"gold refresh failed: {self.error}") from self.error

    def flush(self, timeout: float = 600.0) -> None:
        """Block until every announced window is written (end of a replay, shutdown)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        with self._cv:
            self._flushing += 1
            self._cv.notify_all()
            try:
                while self._pending_batch is not None or self._busy:
                    self.raise_if_failed()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"gold {self.spec.name}: not flushed after {timeout:.0f}s"
                        )
                    self._cv.wait(min(left, 1.0))
            finally:
                self._flushing -= 1
        self.raise_if_failed()

    def close(self, timeout: float = 600.0) -> None:
        if self._thread is None:
            return
        self.flush(timeout)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        self._thread = None
        for sink in self.sinks.values():
            sink.close()
