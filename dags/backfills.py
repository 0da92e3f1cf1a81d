"""Airflow backfill DAGs: one manual ``backfill_<name>`` per stream in ``include/streams.yaml``.

On-call triggers them from the UI's form (mode rebuild | range, from, to, rate
limit, dry run) or with ``riverdelta backfill``. Each run resolves the request
into offsets per partition, refuses what cannot be honoured before any write,
and replays the topic with ``Trigger.AvailableNow`` beside the live stream.
"""

from __future__ import annotations

from riverdelta.airflow.stream_dags import backfill_dags

globals().update(backfill_dags())
