"""Storage roots: one place that knows what a ``file://``, ``s3a://`` or ``hdfs://`` root needs.

Tables, checkpoints and the ``_ops`` Delta tables live under the storage root
(``settings().lake``). Three kinds of client touch them, and each wants the URI
in its own dialect:

- Spark (Hadoop filesystems): the URI as given; ``s3a://`` needs the hadoop-aws
  jars and the ``fs.s3a.*`` settings from ``spark_conf``;
- delta-rs (analysts' reads, the ops history, "is there anything new?"):
  ``s3://`` instead of ``s3a://``, plus storage options (endpoint, locking);
- small files (checkpoint offsets/commits for health): fsspec over pyarrow's
  native filesystems, so no extra Python dependency per scheme.

Control files that need POSIX semantics (locks, pointers replaced by rename) do
not go through here: they live in the control directory (``lake.control_dir``),
which is a local or shared POSIX path on every profile.

Credentials never appear in a URI, a command line or these options: S3 keys
come from the standard ``AWS_*`` environment variables (or an instance role),
read by each client's own credential chain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from riverdelta.config.settings import ConfigError, settings

# Hadoop's names for S3 are plain s3 to everyone else.
_S3_SCHEMES = ("s3a", "s3n", "s3")


def scheme(uri: str) -> str:
    """``""`` for a plain path or ``file:``; otherwise the URI scheme (``s3a``, ``hdfs``…)."""
    if "://" not in uri:
        return ""
    found = uri.split("://", 1)[0].lower()
    return "" if found == "file" else found


def is_local(uri: str) -> bool:
    return scheme(uri) == ""


def local_path(uri: str) -> Path:
    """The POSIX path of a local root (plain path, ``file:/p`` or ``file:///p``)."""
    if scheme(uri):
        raise ValueError(f"{uri} is not on the local filesystem")
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    return Path(uri)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    """Create a local directory; object stores have no directories to make."""
    if is_local(uri):
        local_path(uri).mkdir(parents=True, exist_ok=True)


def is_delta_table(uri: str) -> bool:
    """A table exists once its first commit does, not when ``_delta_log/`` does.

    A writer creates the directory before its first commit lands, and a reader that
    opens it in between gets "No files in log segment". Two stats, not a listing: log
    clean-up removes version 0 only after a checkpoint has been written.
    """
    log_dir = join(uri, "_delta_log")
    return exists(join(log_dir, f"{0:020d}.json")) or exists(join(log_dir, "_last_checkpoint"))


# --------------------------------------------------------------------------- fsspec


def filesystem(uri: str):
    """``(fsspec filesystem, path inside it)`` for any supported root."""
    from fsspec.implementations.arrow import ArrowFSWrapper
    from fsspec.implementations.local import LocalFileSystem

    kind = scheme(uri)
    if kind == "":
        return LocalFileSystem(), str(local_path(uri))
    parsed = urlparse(uri)
    if kind in _S3_SCHEMES:
        from pyarrow import fs as pafs

        return ArrowFSWrapper(pafs.S3FileSystem(**_pyarrow_s3_options())), (
            f"{parsed.netloc}{parsed.path}".rstrip("/")
        )
    if kind in ("hdfs", "viewfs"):
        from pyarrow import fs as pafs

        # libhdfs (JNI) comes with a Hadoop install: HADOOP_HOME / CLASSPATH must be set.
        hdfs = pafs.HadoopFileSystem(parsed.hostname or "default", parsed.port or 0)
        return ArrowFSWrapper(hdfs), parsed.path.rstrip("/")
    raise ConfigError(f"storage root {uri}: scheme {kind!r} is not supported (file, s3a, hdfs)")


def _pyarrow_s3_options() -> dict[str, Any]:
    endpoint = settings().s3_endpoint
    options: dict[str, Any] = {}
    if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        options["region"] = os.environ.get("AWS_REGION") or os.environ["AWS_DEFAULT_REGION"]
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(
            endpoint_override=parsed.netloc or endpoint,
            scheme=parsed.scheme or "https",
            force_virtual_addressing=False,
        )
    return options


# --------------------------------------------------------------------------- delta-rs


def delta_uri(uri: str) -> str:
    """The URI delta-rs understands: local paths plain, ``s3a://`` as ``s3://``."""
    kind = scheme(uri)
    if kind == "":
        return str(local_path(uri))
    if kind in _S3_SCHEMES:
        return "s3://" + uri.split("://", 1)[1]
    return uri


def delta_options(uri: str) -> dict[str, str] | None:
    """delta-rs storage options for ``uri`` (None for local roots)."""
    if scheme(uri) not in _S3_SCHEMES:
        return None
    options: dict[str, str] = {}
    endpoint = settings().s3_endpoint
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    options.setdefault("AWS_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    # Concurrent delta-rs writers (ops history appends) are safe without a lock table:
    # delta-rs 1.x commits with S3's put-if-absent (If-None-Match), which MinIO honours too.
    return options


def delta_table(uri: str, version: int | None = None):
    from deltalake import DeltaTable

    return DeltaTable(delta_uri(uri), version=version, storage_options=delta_options(uri))


def commit_actions(uri: str, version: int) -> list[dict[str, Any]]:
    """The actions of one Delta commit, from its JSON file in ``_delta_log/``.

    delta-rs has no per-commit reader (its history is commit infos only). Raises
    ``FileNotFoundError`` once log clean-up has removed the commit.
    """
    fs, root = filesystem(uri)
    with fs.open(f"{root}/_delta_log/{version:020d}.json", "rb") as fh:
        return [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]


def commit_info(actions: list[dict[str, Any]]) -> dict[str, Any]:
    """The commitInfo action of a commit's actions (``{}`` if the writer left none)."""
    return next((a["commitInfo"] for a in actions if "commitInfo" in a), {})


def commit_seconds(actions: list[dict[str, Any]]) -> float | None:
    """When the commit was made (epoch seconds), from its commitInfo."""
    info = commit_info(actions)
    stamp = info.get("inCommitTimestamp") or info.get("timestamp")
    return stamp / 1000.0 if stamp else None


def data_files_added(actions: list[dict[str, Any]]) -> list[str]:
    """Paths the commit added with ``dataChange=true`` (new rows, not a compaction's rewrite)."""
    return [a["add"]["path"] for a in actions if "add" in a and a["add"].get("dataChange", True)]


def write_delta(uri: str, data, mode: str = "append") -> None:
    from deltalake import write_deltalake

    makedirs(uri)
    write_deltalake(delta_uri(uri), data, mode=mode, storage_options=delta_options(uri))


# --------------------------------------------------------------------------- Spark


def spark_conf(root: str) -> dict[str, str]:
    """Hadoop settings Spark needs for ``root`` (only s3a needs any)."""
    if scheme(root) not in _S3_SCHEMES:
        return {}
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        # Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a role),
        # never from this configuration, which ends up on command lines.
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
        ),
    }
    endpoint = settings().s3_endpoint
    if endpoint:
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": endpoint,
                # MinIO and most S3-compatible stores serve buckets by path, not by DNS name.
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(
                    endpoint.startswith("https://")
                ).lower(),
                "spark.hadoop.fs.s3a.endpoint.region": os.environ.get("AWS_REGION", "us-east-1"),
            }
        )
    return conf


def jar_sets(root: str) -> tuple[str, ...]:
    """Extra jar sets (``jvm/<name>/pom.xml``) Spark needs for ``root``."""
    return ("s3",) if scheme(root) in _S3_SCHEMES else ()
