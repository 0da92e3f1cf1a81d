"""Storage roots and the one environment switch: what each scheme and profile resolves to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from riverdelta.config.settings import ConfigError, load_settings, settings
from riverdelta.storage import roots as storage

pytestmark = pytest.mark.unit


@pytest.fixture()
def env():
    """Set RIVERDELTA_* variables for one test; restore them and the settings cache after."""
    saved = dict(os.environ)
    settings.cache_clear()
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)
    settings.cache_clear()


@pytest.mark.parametrize(
    ("uri", "kind", "local"),
    [
        ("/data/lake", "", Path("/data/lake")),
        ("file:/data/lake", "", Path("/data/lake")),
        ("file:///data/lake", "", Path("/data/lake")),
        ("s3a://bucket/lake", "s3a", None),
        ("hdfs://namenode:8020/lake", "hdfs", None),
    ],
)
def test_scheme_and_local_path(uri, kind, local):
    assert storage.scheme(uri) == kind
    assert storage.is_local(uri) is (local is not None)
    if local is None:
        with pytest.raises(ValueError):
            storage.local_path(uri)
    else:
        assert storage.local_path(uri) == local


def test_delta_rs_gets_its_own_dialect(env):
    env["RIVERDELTA_ENV"] = "compose"
    assert storage.delta_uri("s3a://riverdelta/lake/tables/x") == "s3://riverdelta/lake/tables/x"
    assert storage.delta_uri("file:///data/lake/t") == "/data/lake/t"
    assert storage.delta_uri("hdfs://nn:8020/lake/t") == "hdfs://nn:8020/lake/t"
    assert storage.delta_options("/data/lake/t") is None
    opts = storage.delta_options("s3a://riverdelta/lake/tables/x")
    assert opts["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert opts["AWS_ALLOW_HTTP"] == "true"
    assert opts["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] == "false"


def test_s3a_spark_settings_carry_no_secret(env):
    env.update(
        RIVERDELTA_ENV="compose",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEY",
        AWS_SECRET_ACCESS_KEY="example-secret-value",
    )
    conf = storage.spark_conf(load_settings().lake)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    text = repr(conf)
    assert "AKIAEXAMPLEKEY" not in text and "example-secret-value" not in text
    assert storage.jar_sets("s3a://riverdelta/lake") == ("s3",)
    assert storage.spark_conf("/data/lake") == {} and storage.jar_sets("/data/lake") == ()


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"gs.*not supported"):
        storage.filesystem("gs://bucket/lake")


def test_embedded_profile_is_the_default(env, tmp_path):
    for key in [k for k in env if k.startswith("RIVERDELTA_") and k != "RIVERDELTA_STREAMS"]:
        del env[key]
    env["RIVERDELTA_HOME"] = str(tmp_path)
    s = load_settings()
    assert (s.env, s.spark_master, s.kafka_bootstrap) == ("embedded", "local[2]", "127.0.0.1:9092")
    assert s.lake == f"{tmp_path}/lake"
    assert s.control == tmp_path / "lake" / "_ops"  # beside the tables, as before
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas, s.s3_endpoint) == (1, 1, None)


def test_compose_profile_from_one_variable(env, tmp_path):
    for key in [k for k in env if k.startswith("RIVERDELTA_") and k != "RIVERDELTA_STREAMS"]:
        del env[key]
    env.update(RIVERDELTA_ENV="compose", RIVERDELTA_HOME=str(tmp_path))
    s = load_settings()
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert s.spark_master == "spark://spark-master:7077"
    assert s.lake == "s3a://riverdelta/lake"
    assert s.control == tmp_path / "control"  # object stores have no rename/flock
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)
    assert s.airflow_url == "http://airflow-apiserver:8080"
    # Any single value can still be overridden without touching the others.
    env["RIVERDELTA_SPARK_MASTER"] = "spark://other:7077"
    assert load_settings().spark_master == "spark://other:7077"
    assert load_settings().lake == "s3a://riverdelta/lake"


def test_file_uri_root_keeps_control_files_beside_it(env, tmp_path):
    env["RIVERDELTA_LAKE"] = f"file://{tmp_path}/lake"
    assert load_settings().control == tmp_path / "lake" / "_ops"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("RIVERDELTA_ENV", "distributed", "expected one of embedded, compose"),
        ("RIVERDELTA_KAFKA_MIN_INSYNC_REPLICAS", "4", "between 1 and the replication factor"),
        ("RIVERDELTA_KAFKA_PORT", "ninety", "not an integer"),
    ],
)
def test_bad_configuration_fails_with_the_fix(env, key, value, message):
    env[key] = value
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_standalone_apps_are_capped(env):
    from riverdelta.launch.spark import spark_conf

    env["RIVERDELTA_SPARK_MASTER"] = "spark://spark-master:7077"
    conf = spark_conf("app")
    # Uncapped, the first stream's app takes every core and the next one waits forever.
    assert (conf["spark.cores.max"], conf["spark.executor.cores"]) == ("2", "1")
    env["RIVERDELTA_SPARK_CORES_MAX"] = "4"
    settings.cache_clear()
    assert spark_conf("app")["spark.cores.max"] == "4"
    env["RIVERDELTA_SPARK_MASTER"] = "local[2]"
    settings.cache_clear()
    assert "spark.cores.max" not in spark_conf("app")


def test_a_log_directory_without_a_commit_is_not_a_table(tmp_path):
    # A writer makes _delta_log/ before its first commit lands; delta-rs cannot open that.
    table = tmp_path / "gold"
    (table / "_delta_log").mkdir(parents=True)
    assert not storage.is_delta_table(str(table))
    storage.write_delta(str(table), _one_row())
    assert storage.is_delta_table(str(table))
    assert storage.delta_table(str(table)).version() == 0


def _one_row():
    import pyarrow as pa

    return pa.table({"x": [1]})
