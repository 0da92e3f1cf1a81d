"""The only place Spark is configured.

``spark_conf`` builds the configuration (connector jars from the project cache,
Delta extensions, sizing for a 2-core machine, the master from settings);
``get_spark`` makes an in-process session from it and ``submit_conf_args``
turns the same dict into spark-submit ``--conf`` arguments, so a driver
started by spark-submit and a test session see exactly the same Spark.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from riverdelta.config.settings import settings
from riverdelta.kafka import client as kafka_client
from riverdelta.launch import jars
from riverdelta.storage import roots as storage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_conf(
    app_name: str,
    *,
    master: str | None = None,
    ui: bool | None = None,
    shuffle_partitions: int | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    s = settings()
    if ui is None:
        ui = os.environ.get("RIVERDELTA_SPARK_UI", "false").lower() == "true"
    partitions = shuffle_partitions or int(os.environ.get("RIVERDELTA_SHUFFLE_PARTITIONS", "2"))
    conf = {
        "spark.master": master or s.spark_master,
        "spark.app.name": app_name,
        "spark.jars": ",".join(
            str(p) for name in ("spark", *storage.jar_sets(s.lake)) for p in jars.jars(name)
        ),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # 200 shuffle partitions stall stateful queries on 2 cores.
        "spark.sql.shuffle.partitions": str(partitions),
        "spark.default.parallelism": str(partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": str(ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("RIVERDELTA_DRIVER_MEMORY", "1g"),
        "spark.databricks.delta.snapshotPartitions": "2",
        # The gold refresher runs beside the ingest in one driver: FAIR shares the cores
        # between their jobs instead of queueing a batch behind a gold rewrite.
        "spark.scheduler.mode": "FAIR",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        # Cached jars only: never let a stray --packages reach for the network.
        "spark.jars.ivy": str(s.cache / "ivy"),
        # The Kafka source's options carry the SASL login (kafka.sasl.jaas.config): keep it
        # out of the UI, the event log and every logged plan.
        "spark.redaction.regex": kafka_client.SPARK_REDACTION_REGEX,
        "spark.sql.redaction.options.regex": kafka_client.SPARK_OPTIONS_REDACTION_REGEX,
    }
    if conf["spark.master"].startswith("spark://"):
        # Standalone gives an app every free core by default: the first stream would
        # starve the others. Cap each app, one core per executor so losing a worker
        # loses a slice of the app, not all of it.
        conf.update(
            {
                "spark.cores.max": os.environ.get("RIVERDELTA_SPARK_CORES_MAX", "2"),
                "spark.executor.cores": "1",
                "spark.executor.memory": os.environ.get("RIVERDELTA_EXECUTOR_MEMORY", "1g"),
            }
        )
    conf.update(storage.spark_conf(s.lake))
    if extra:
        conf.update(extra)
    return conf


def submit_conf_args(conf: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in conf.items():
        if key == "spark.master":
            args += ["--master", value]
        elif key == "spark.app.name":
            args += ["--name", value]
        elif key == "spark.jars":
            args += ["--jars", value]
        elif key == "spark.driver.memory":
            args += ["--driver-memory", value]
        else:
            args += ["--conf", f"{key}={value}"]
    return args


def get_spark(app_name: str = "riverdelta", **kwargs: object) -> SparkSession:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in spark_conf(app_name, **kwargs).items():  # type: ignore[arg-type]
        builder = builder.config(key, value)
    return builder.getOrCreate()
