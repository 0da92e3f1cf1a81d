"""An ``s3a://`` storage root end to end, against a real S3 API server on loopback.

S3Proxy (Maven Central, jclouds filesystem backend) speaks the S3 protocol the
way MinIO does; the same code talks to MinIO in the compose stack and to AWS S3.
A replay driver (spark-submit, hadoop-aws + AWS SDK v2) writes the tables and
checkpoint to the bucket; health, the ops history, publication and analysts'
reads then go through delta-rs and pyarrow's S3 filesystem. Credentials travel
only by environment.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.ingest_helpers import produce, wait_for

pytestmark = pytest.mark.integration

KEY_ID = "riverdelta-test"
SECRET = "s3proxy-loopback-secret"  # a throwaway key for a loopback server


@pytest.fixture()
def s3_root(tmp_path, monkeypatch):
    """A running S3Proxy with bucket ``riverdelta``; settings point the lake at it."""
    from urllib.request import urlopen

    from riverdelta.config.settings import settings
    from riverdelta.launch import jars, procs

    port = procs.free_port()
    data = tmp_path / "s3data"
    data.mkdir()
    conf = tmp_path / "s3proxy.conf"
    conf.write_text(
        "\n".join(
            [
                f"s3proxy.endpoint=http://127.0.0.1:{port}",
                "s3proxy.authorization=aws-v2-or-v4",
                f"s3proxy.identity={KEY_ID}",
                f"s3proxy.credential={SECRET}",
                "jclouds.provider=filesystem-nio2",
                f"jclouds.filesystem.basedir={data}",
                "",
            ]
        )
    )
    cmd = [
        "java",
        "-Xmx256m",
        "-DLOG_LEVEL=warn",
        "-cp",
        ":".join(str(p) for p in jars.jars("s3proxy")),
        "org.gaul.s3proxy.Main",
        "--properties",
        str(conf),
    ]
    procs.start_detached("s3proxy", cmd, log=tmp_path / "s3proxy.log")

    def answers() -> bool:
        try:
            urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        except OSError as exc:  # 403 without a signature: the server is up
            return "403" in str(exc)
        return True

    try:
        wait_for(answers, 60, "S3Proxy to listen", interval=0.5)
        monkeypatch.setenv("RIVERDELTA_LAKE", "s3a://riverdelta/lake")
        monkeypatch.setenv("RIVERDELTA_S3_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.delenv("RIVERDELTA_CONTROL", raising=False)
        settings.cache_clear()
        from pyarrow import fs

        fs.S3FileSystem(
            access_key=KEY_ID,
            secret_key=SECRET,
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir("riverdelta")
        yield data
    finally:
        procs.stop("s3proxy")
        settings.cache_clear()


def test_s3a_root(s3_root, stream_registry, kafka):
    from riverdelta.airflow.env import ensure_airflow_env
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.launch.launchers import assert_no_secret_in_argv
    from riverdelta.launch.submit import build_command, ingest_args, submit_env
    from riverdelta.ops import health
    from riverdelta.ops import state as ops
    from riverdelta.quality.publications import publication, publish
    from riverdelta.quality.read import read_validated
    from riverdelta.quality.tables import latest_version
    from riverdelta.storage import roots as storage
    from riverdelta.storage.lake import TableSet, checkpoint_path

    stream = stream_registry()
    spec = load_registry().get(stream)
    sent = produce(stream, 500, seed=5, poison_rate=0.04, duplicate_rate=0.04)

    ensure_airflow_env()
    cmd = build_command(ingest_args(stream, "replay", starting="earliest"), name="s3-replay")
    assert_no_secret_in_argv(cmd, [SECRET])
    assert "spark.hadoop.fs.s3a.path.style.access=true" in cmd
    assert any("hadoop-aws-3.4.2.jar" in c for c in cmd)
    log = settings().log_dir / "s3-replay.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        rc = subprocess.run(cmd, env=submit_env(), stdout=out, stderr=subprocess.STDOUT).returncode
    assert rc == 0, log.read_text()[-3000:]

    # The tables are in the bucket (S3Proxy's files), at the paths the root gives.
    tables = TableSet.for_stream(spec)
    assert all(p.startswith("s3a://riverdelta/lake/tables/") for p in tables.paths.values())
    assert (s3_root / "riverdelta" / "lake" / "tables" / f"{stream}_bronze" / "_delta_log").is_dir()

    def rows(layer: str) -> int:
        return storage.delta_table(tables[layer]).to_pyarrow_table().num_rows

    # Exact counts through delta-rs over S3: nothing lost, nothing twice.
    bronze = storage.delta_table(tables["bronze"]).to_pyarrow_table()
    assert bronze.num_rows == sent["sent"] == 500
    coords = set(zip(*(bronze.column(c).to_pylist() for c in ("partition", "offset")), strict=True))
    assert len(coords) == 500
    assert rows("silver") == sent["valid"] + sent["late"]
    poison = sum(v for k, v in sent["by_kind"].items() if k not in ("valid", "duplicate", "late"))
    assert rows("quarantine") == poison
    assert rows("silver") + rows("quarantine") + sent["duplicates"] == 500

    # Health reads the checkpoint's offsets and commits from the bucket.
    checkpoint = checkpoint_path(stream, "replay")
    assert checkpoint.startswith("s3a://")
    state = health.read_checkpoint(checkpoint)
    assert state is not None and state.last_committed_batch is not None
    assert state.end_offsets == health.end_offsets(kafka, spec.topic)

    # The ops history is a delta-rs table in the bucket; pointers stay on the control dir.
    ops.record(stream, "storage_check")
    assert [e["event"] for e in ops.history(stream)] == ["storage_check"]
    assert (s3_root / "riverdelta" / "lake" / "_ops" / "ops_history" / "_delta_log").is_dir()
    version = latest_version(tables["silver"])
    publish(f"{stream}_silver", version, by="test")
    assert publication(f"{stream}_silver")["path"] == tables["silver"]
    assert read_validated(f"{stream}_silver", engine="polars").height == rows("silver")
