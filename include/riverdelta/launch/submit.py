"""spark-submit commands, built by the Airflow Spark provider's hook.

The CLI (``riverdelta run``) and the launchers the DAGs use call the same
function, so a stream runs the same way from a shell and from Airflow. The
command is an argument list, never a shell string; the master comes from the
Airflow Spark connection (``AIRFLOW_CONN_SPARK_DEFAULT``).
"""

from __future__ import annotations

import io
import os
import re
import sys
import zipfile
from pathlib import Path

from riverdelta.config.settings import PROJECT_ROOT, settings
from riverdelta.launch.spark import spark_conf
from riverdelta.storage import files
from riverdelta.stream.job import IngestMode

INGEST_APP = PROJECT_ROOT / "spark_apps" / "ingest.py"


def package_zip() -> Path:
    """The ``riverdelta`` package as a zip for ``--py-files`` (remote drivers and executors)."""
    src = PROJECT_ROOT / "include" / "riverdelta"
    out = settings().home / "dist" / "riverdelta.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    newest = max(p.stat().st_mtime for p in src.rglob("*") if p.is_file())
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(src.parent))
    return files.write_atomic(out, buffer.getvalue())


def add_ingest_arguments(parser) -> None:
    """The ingest options shared by `riverdelta run` and `spark_apps/ingest.py`."""
    # Plain strings (an IngestMode compares equal): argparse's own refusal of another value.
    modes = [m.value for m in IngestMode]
    parser.add_argument("--mode", choices=modes, default=IngestMode.LIVE.value)
    parser.add_argument(
        "--from",
        dest="starting",
        default=None,
        help="earliest | latest | ISO timestamp | offsets JSON",
    )
    parser.add_argument("--max-offsets-per-trigger", type=int, default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--until",
        default=None,
        help='replay only: exclusive end offsets per partition, JSON {"0": 120, ...}',
    )
    parser.add_argument(
        "--skip-present",
        action="store_true",
        help="replay only: skip records already in bronze; resolve quarantined ones that pass now",
    )


def ingest_args(
    stream: str,
    mode: IngestMode | str,
    *,
    starting: str | None = None,
    max_offsets_per_trigger: int | None = None,
    checkpoint: str | None = None,
    tables_root: str | None = None,
    trigger: str | None = None,
    until: str | None = None,
    skip_present: bool = False,
) -> list[str]:
    args = ["--stream", stream, "--mode", str(mode), "--registry", str(settings().streams_file)]
    if skip_present:
        args.append("--skip-present")
    for flag, value in (
        ("--from", starting),
        ("--max-offsets-per-trigger", max_offsets_per_trigger),
        ("--checkpoint", checkpoint),
        ("--tables-root", tables_root),
        ("--trigger", trigger),
        ("--until", until),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def build_command(
    application_args: list[str],
    *,
    name: str,
    conn_id: str = "spark_default",
    application: Path = INGEST_APP,
    conf: dict[str, str] | None = None,
) -> list[str]:
    """``conf`` adds or overrides Spark settings (e.g. executor sizing on a standalone cluster)."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    conf = spark_conf(name, extra=conf)
    conf.pop("spark.master")  # the connection decides the master
    jars = conf.pop("spark.jars")
    driver_memory = conf.pop("spark.driver.memory")
    conf.pop("spark.app.name")
    hook = SparkSubmitHook(
        conf=conf,
        conn_id=conn_id,
        jars=jars,
        driver_memory=driver_memory,
        name=name,
        application_args=application_args,
        py_files=None if settings().spark_master.startswith("local") else str(package_zip()),
    )
    return hook._build_spark_submit_command(str(application))


# What a driver may inherit from the process that starts it (an Airflow task, the CLI):
# the system, Java/Spark/Hadoop, cloud credentials the storage root needs, and
# Riverdelta's own settings. Not Airflow's environment: its JWT secret, database URL
# and Fernet key have no business in a Spark driver (nor in its event log or UI).
_DRIVER_ENV = re.compile(
    r"^(PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|TZ|TMPDIR|TERM|LC_\w+|"
    r"JAVA_HOME|JAVA_TOOL_OPTIONS|SPARK_\w+|PYSPARK_\w+|HADOOP_\w+|YARN_CONF_DIR|"
    r"KUBECONFIG|CLASSPATH|LD_LIBRARY_PATH|PYTHONPATH|PYTHONHASHSEED|VIRTUAL_ENV|AWS_\w+|"
    r"RIVERDELTA_\w+|GX_\w+)$"
)


def driver_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` without what a driver must not see (everything not on the allow-list)."""
    return {k: v for k, v in base.items() if _DRIVER_ENV.match(k)}


def submit_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a driver: this interpreter for Python, settings passed through."""
    env = driver_env(dict(os.environ if base is None else base))
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    s = settings()
    # The driver resolves settings again: hand it the resolved values, not just the profile,
    # so an override made in this process (a test's cluster, an operator's bucket) holds there.
    env.update(
        {
            "RIVERDELTA_HOME": str(s.home),
            "RIVERDELTA_CACHE": str(s.cache),
            "RIVERDELTA_ENV": s.env,
            "RIVERDELTA_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "RIVERDELTA_LAKE": s.lake,
            "RIVERDELTA_CONTROL": str(s.control),
            "RIVERDELTA_STREAMS": str(s.streams_file),
        }
    )
    if s.s3_endpoint:
        env["RIVERDELTA_S3_ENDPOINT"] = s.s3_endpoint
    env.update(kafka_security_env(s))
    return env


def kafka_security_env(s) -> dict[str, str]:
    """The Kafka security settings for a driver: names and paths, never the password.

    The password reaches the driver as the file's path, or as
    RIVERDELTA_KAFKA_SASL_PASSWORD already in the environment; never on argv.
    """
    values = {
        "RIVERDELTA_KAFKA_SECURITY": s.kafka_security_protocol.lower(),
        "RIVERDELTA_KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism,
        "RIVERDELTA_KAFKA_SASL_USERNAME": s.kafka_sasl_username,
        "RIVERDELTA_KAFKA_SASL_PASSWORD_FILE": s.kafka_sasl_password_file,
        "RIVERDELTA_KAFKA_SSL_CA": s.kafka_ssl_ca,
        "RIVERDELTA_KAFKA_SSL_KEYSTORE": s.kafka_ssl_keystore,
    }
    return {k: str(v) for k, v in values.items() if v is not None}
