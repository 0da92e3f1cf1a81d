"""Airflow maintenance DAGs: ``maintain_<stream>`` per stream in ``include/streams.yaml``
and ``maintain_ops``.

Each compacts, checkpoints and vacuums its tables on the registry's schedule
(nightly by default) beside the live stream, keeping every file the validated
versions and unvalidated increments need. Adding a stream adds its DAG.
"""

from __future__ import annotations

from riverdelta.airflow.maintenance_dags import maintenance_dags

globals().update(maintenance_dags())
