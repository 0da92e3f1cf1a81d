"""Where a stream's Spark driver runs, behind one interface.

Streams never end, and Airflow tasks must, so every launcher starts a driver
and returns a ``Deployment`` (JSON-safe, stored in the stream's state); later
tasks ask ``status`` and ``stop`` with that record, possibly from another
process. Local and standalone drivers are detached ``spark-submit`` processes on
this host (Python drivers cannot run in cluster mode on standalone); Kubernetes
and YARN run the driver in the cluster and are addressed by their ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from riverdelta.launch import procs

RUNNING = "RUNNING"
DEAD = "DEAD"
UNKNOWN = "UNKNOWN"

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Deployment:
    stream: str
    launcher: str
    pid: int | None = None
    start_ticks: int | None = None
    spark_app_id: str | None = (
        None  # Spark (local-…, app-…), YARN (application_…) or K8s (spark-…) id
    )
    submission_id: str | None = None  # K8s "namespace:driver-pod"
    log: str | None = None
    master: str = ""
    started_at: float = 0.0
    # A pid means nothing on another host (or container): status there is UNKNOWN, not DEAD.
    host: str | None = None
    # The driver log is appended across restarts; the app id is searched after this offset only.
    log_offset: int = 0

    @property
    def deployment_id(self) -> str | None:
        """What names the driver to its cluster manager: the Spark app id, else the K8s submission."""
        return self.spark_app_id or self.submission_id

    def to_dict(self) -> dict[str, Any]:
        return {_STORED_KEYS.get(k, k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {_FIELDS.get(k, k): v for k, v in data.items()}
        # Unknown keys are ignored so a record written by a newer version still loads.
        return cls(**{k: v for k, v in fields.items() if k in known})


# Field -> key in the stored deployment (the state files): records already written still load.
_STORED_KEYS = {"spark_app_id": "app_id"}
_FIELDS = {v: k for k, v in _STORED_KEYS.items()}


# --------------------------------------------------------------------------- secrets

_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY")


def assert_no_secret_in_argv(cmd: Sequence[str], secrets: Sequence[str]) -> None:
    """Refuse a command line carrying a secret: argv is world-readable in /proc and ps."""
    for value in secrets:
        if not value:
            continue
        for i, arg in enumerate(cmd):
            if value in arg:
                # Name the argument, never the value: this message ends up in logs.
                key = arg.split("=", 1)[0]
                where = key if "=" in arg and value not in key else f"argument #{i}"
                raise ValueError(
                    f"a secret value appears in the spark-submit command ({where}); pass it "
                    "through the environment instead (AWS_* for s3a, "
                    "RIVERDELTA_KAFKA_SASL_PASSWORD_FILE for Kafka)"
                )


def _env_secrets(env: dict[str, str]) -> list[str]:
    """Values of secret-looking variables; *_FILE/*_PATH/*_DIR name where a secret is, not it."""
    found = [
        v
        for k, v in env.items()
        if _SECRET_NAME.search(k.upper())
        and not k.upper().endswith(("_FILE", "_PATH", "_DIR"))
        # Short values ("1", "true") would match everywhere and protect nothing.
        and len(v) >= 6
    ]
    return found + _kafka_password_from_file(env)


def _kafka_password_from_file(env: dict[str, str]) -> list[str]:
    """The Kafka password kept in a file is a secret too: it must not reach argv either."""
    path = env.get("RIVERDELTA_KAFKA_SASL_PASSWORD_FILE")
    try:
        value = Path(path).read_text().strip() if path else ""
    except OSError:
        return []
    return [value] if len(value) >= 6 else []


# --------------------------------------------------------------------------- spark-submit argv

# spark-submit options that take no value; every other option takes one.
_FLAGS = {"--verbose", "-v", "--supervise", "--help", "-h", "--version", "--usage-error"}


def split_submit(cmd: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """(binary, options, [application, *application_args]) of a spark-submit argv.

    Options after the application belong to the application, so rewrites must
    only touch the part before it.
    """
    if not cmd:
        raise ValueError("empty spark-submit command")
    args = list(cmd[1:])
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += _option_width(args, i)
    return cmd[0], args[:i], args[i:]


def submit_option(cmd: Sequence[str], option: str) -> str | None:
    """The last value of ``option`` (``--master``, ``--deploy-mode``…) before the application."""
    _, options, _ = split_submit(cmd)
    value = None
    i = 0
    while i < len(options):
        arg = options[i]
        if arg == option and i + 1 < len(options):
            value = options[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        i += _option_width(options, i)
    return value


def _option_width(options: list[str], i: int) -> int:
    arg = options[i]
    return 1 if (arg in _FLAGS or "=" in arg or not arg.startswith("-")) else 2


def _without(options: list[str], option: str, conf_key: str | None = None) -> list[str]:
    """``options`` minus every ``option`` (or, with ``conf_key``, every ``--conf conf_key=…``)."""
    out: list[str] = []
    i = 0
    while i < len(options):
        arg = options[i]
        width = _option_width(options, i)
        if conf_key is None:
            drop = arg == option or arg.startswith(option + "=")
        elif arg == "--conf" and i + 1 < len(options):
            drop = options[i + 1].split("=", 1)[0] == conf_key
        elif arg.startswith("--conf="):
            drop = arg.removeprefix("--conf=").split("=", 1)[0] == conf_key
        else:
            drop = False
        if not drop:
            out += options[i : i + width]
        i += width
    return out


def _with_deploy_mode(
    cmd: Sequence[str], mode: str, conf: dict[str, str] | None = None
) -> list[str]:
    binary, options, app = split_submit(cmd)
    if not app:
        raise ValueError("spark-submit command has no application")
    options = _without(options, "--deploy-mode")
    for key in conf or {}:
        options = _without(options, "--conf", conf_key=key)
    options = [*options, "--deploy-mode", mode]
    for key, value in (conf or {}).items():
        options += ["--conf", f"{key}={value}"]
    return [binary, *options, *app]


def _refuse_cluster_mode(cmd: Sequence[str]) -> str | None:
    mode = submit_option(cmd, "--deploy-mode")
    if mode == "cluster":
        # spark-submit would return at once and the driver would look dead: a restart loop.
        raise ValueError(
            "this launcher runs the driver on this host, but the command asks for "
            "--deploy-mode cluster (Spark standalone cannot run Python drivers in cluster "
            "mode); set the Spark connection's deploy mode to client"
        )
    return mode


# --------------------------------------------------------------------------- launchers


class Launcher(ABC):
    name: str = ""

    @abstractmethod
    def launch(self, stream: str, cmd: list[str], env: dict[str, str], log: Path) -> Deployment:
        """Start the driver and return at once; the driver outlives the caller."""

    @abstractmethod
    def status(self, dep: Deployment) -> str:
        """RUNNING, DEAD, or UNKNOWN when the truth cannot be found out from here."""

    @abstractmethod
    def stop(self, dep: Deployment, timeout: float = 30) -> None: ...

    def refresh(self, dep: Deployment) -> Deployment:
        """``dep`` with whatever was learned since launch (the Spark app id)."""
        return dep


def application_id_from_log(text: str) -> str | None:
    """The first Spark application id in a driver log (local-…, app-…, application_…)."""
    match = _APP_ID.search(text)
    return match.group(0) if match else None


_APP_ID = re.compile(r"\b(?:local-\d{13}|app-\d{14}-\d{4,}|application_\d{10,}_\d{4,})\b")
_LOG_SCAN_BYTES = 4 * 1024 * 1024


class LocalLauncher(Launcher):
    """spark-submit in its own session on this host, tracked by pid and start ticks."""

    name = "local"

    @staticmethod
    def proc_name(stream: str) -> str:
        return f"stream-{stream}"

    def check_command(self, cmd: list[str]) -> list[str]:
        _refuse_cluster_mode(cmd)
        return list(cmd)

    def launch(self, stream: str, cmd: list[str], env: dict[str, str], log: Path) -> Deployment:
        cmd = self.check_command(cmd)
        assert_no_secret_in_argv(cmd, _env_secrets(env))
        existing = procs.running(self.proc_name(stream))
        if existing is not None:
            # Two drivers on one checkpoint corrupt it; the caller must stop the first.
            raise RuntimeError(
                f"stream {stream} already has a driver (pid {existing.pid}, log {existing.log}); "
                "stop it before launching another"
            )
        offset = log.stat().st_size if log.exists() else 0
        info = procs.start_detached(self.proc_name(stream), cmd, log=log, env=env)
        return Deployment(
            stream=stream,
            launcher=self.name,
            pid=info.pid,
            start_ticks=info.start_ticks,
            log=str(log),
            master=submit_option(cmd, "--master") or "",
            started_at=info.started_at,
            host=socket.gethostname(),
            log_offset=offset,
        )

    @staticmethod
    def _info(dep: Deployment) -> procs.ProcInfo | None:
        if dep.pid is None or dep.start_ticks is None:
            return None
        return procs.ProcInfo(
            LocalLauncher.proc_name(dep.stream),
            dep.pid,
            dep.start_ticks,
            dep.log or "",
            [],
            dep.started_at,
        )

    def _here(self, dep: Deployment) -> bool:
        return dep.host is None or dep.host == socket.gethostname()

    def status(self, dep: Deployment) -> str:
        info = self._info(dep)
        if info is None or not self._here(dep):
            return UNKNOWN
        procs.reap(info.pid)
        return RUNNING if procs.alive(info) else DEAD

    def application_id(self, dep: Deployment) -> str | None:
        """The Spark app id, read from the driver log when first asked (never waited for)."""
        if dep.spark_app_id or not dep.log:
            return dep.spark_app_id
        try:
            with open(dep.log, "rb") as f:
                f.seek(dep.log_offset)
                text = f.read(_LOG_SCAN_BYTES).decode(errors="replace")
        except OSError:
            return None
        return application_id_from_log(text)

    def refresh(self, dep: Deployment) -> Deployment:
        spark_app_id = self.application_id(dep)
        if spark_app_id == dep.spark_app_id:
            return dep
        return dataclasses.replace(dep, spark_app_id=spark_app_id)

    def stop(self, dep: Deployment, timeout: float = 30) -> None:
        info = self._info(dep)
        if info is None:
            return
        if not self._here(dep):
            raise RuntimeError(
                f"the driver of {dep.stream} runs on {dep.host}, not here ({socket.gethostname()}); "
                "stop it from that host"
            )
        if _may_signal_group(info):
            _killpg(info.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and procs.group_alive(info.pid):
                time.sleep(0.2)
            if procs.group_alive(info.pid):
                _killpg(info.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and procs.group_alive(info.pid):
                    time.sleep(0.1)
        recorded = procs.read(info.name)
        if recorded is not None and recorded.pid == info.pid:
            procs.pid_file(info.name).unlink(missing_ok=True)


class StandaloneLauncher(LocalLauncher):
    """Spark standalone: the Python driver runs here in client mode, executors on the workers."""

    name = "standalone"

    def check_command(self, cmd: list[str]) -> list[str]:
        master = submit_option(cmd, "--master") or ""
        if not master.startswith("spark://"):
            raise ValueError(
                f"standalone launcher needs a spark:// master, the command has {master!r}"
            )
        if _refuse_cluster_mode(cmd) == "client":
            return list(cmd)
        return _with_deploy_mode(cmd, "client")


def _may_signal_group(info: procs.ProcInfo) -> bool:
    """True if the process group ``info.pid`` can only be ours.

    Either the leader is alive with the recorded start ticks, or no process has
    that pid at all: a pid is not reused while a group with that id exists, so
    any such group is the driver's orphaned children. A live process with the
    same pid but other start ticks is someone else's and is never signalled.
    """
    procs.reap(info.pid)
    if procs.alive(info):
        return True
    return not psutil.pid_exists(info.pid) and procs.group_alive(info.pid)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------- cluster mode


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout or "") + (proc.stderr or "")


class _ClusterLauncher(Launcher):
    """Cluster mode, fire and forget: spark-submit returns once the driver is submitted."""

    wait_conf = ""

    def __init__(
        self,
        *,
        runner: Runner = subprocess.run,
        env: dict[str, str] | None = None,
        spark_submit: str | None = None,
        submit_timeout: float = 300.0,
        poll_interval: float = 2.0,
    ) -> None:
        self.runner = runner
        self.env = env
        self.spark_submit = spark_submit
        self.submit_timeout = submit_timeout
        self.poll_interval = poll_interval

    def cluster_command(self, cmd: Sequence[str]) -> list[str]:
        return _with_deploy_mode(cmd, "cluster", {self.wait_conf: "false"})

    def _run(self, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60.0):
        return self.runner(
            cmd, capture_output=True, text=True, env=env or self.env, timeout=timeout, check=False
        )

    def _submit(
        self, stream: str, cmd: list[str], env: dict[str, str], log: Path
    ) -> tuple[list[str], str]:
        cmd = self.cluster_command(cmd)
        assert_no_secret_in_argv(cmd, _env_secrets(env))
        self.spark_submit = self.spark_submit or cmd[0]
        proc = self._run(cmd, env, self.submit_timeout)
        out = _output(proc)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(out)
        if proc.returncode != 0:
            tail = "\n".join(out.splitlines()[-20:])
            raise RuntimeError(
                f"spark-submit of {stream} failed (exit {proc.returncode}); output in {log}:\n{tail}"
            )
        return cmd, out

    def _poll_stopped(self, dep: Deployment, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.status(dep) != RUNNING:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what} was asked to stop but still runs after {timeout:.0f}s")
            time.sleep(self.poll_interval)


_K8S_DEPLOYED = re.compile(
    r"application ID (?P<app>\S+) and submission ID (?P<sub>[^\s:]+:\S+)", re.IGNORECASE
)


def parse_k8s_submission(text: str) -> tuple[str | None, str | None]:
    """(application id, "namespace:driver-pod") from a cluster-mode spark-submit's output."""
    match = _K8S_DEPLOYED.search(text)
    if not match:
        return None, None
    return match.group("app"), match.group("sub")


def parse_k8s_status(text: str) -> str:
    """The driver pod's state from ``spark-submit --status`` output."""
    if re.search(r"application not found", text, re.IGNORECASE):
        # The API server answered and the driver pod is gone: that is dead, not unknown.
        return DEAD
    phases = re.findall(r"^\s*phase:\s*(\w+)", text, re.IGNORECASE | re.MULTILINE)
    if not phases:
        return UNKNOWN
    phase = phases[-1].lower()
    if phase in ("running", "pending"):
        return RUNNING
    if phase in ("succeeded", "failed", "error"):
        return DEAD
    return UNKNOWN


class KubernetesLauncher(_ClusterLauncher):
    name = "kubernetes"
    wait_conf = "spark.kubernetes.submission.waitAppCompletion"

    def launch(self, stream: str, cmd: list[str], env: dict[str, str], log: Path) -> Deployment:
        started = time.time()
        cmd, out = self._submit(stream, cmd, env, log)
        spark_app_id, submission_id = parse_k8s_submission(out)
        if submission_id is None:
            raise RuntimeError(
                f"spark-submit of {stream} succeeded but printed no submission id, so the driver "
                f"cannot be tracked; look for its pod (kubectl get pods -l spark-role=driver) and "
                f"the output in {log}"
            )
        return Deployment(
            stream=stream,
            launcher=self.name,
            spark_app_id=spark_app_id,
            submission_id=submission_id,
            log=str(log),
            master=submit_option(cmd, "--master") or "",
            started_at=started,
        )

    def _binary(self) -> str:
        return self.spark_submit or "spark-submit"

    def status_command(self, dep: Deployment) -> list[str]:
        return [self._binary(), "--master", dep.master, "--status", dep.submission_id or ""]

    def kill_command(self, dep: Deployment) -> list[str]:
        return [self._binary(), "--kill", dep.submission_id or "", "--master", dep.master]

    def status(self, dep: Deployment) -> str:
        if not dep.submission_id:
            return UNKNOWN
        try:
            proc = self._run(self.status_command(dep))
        except (OSError, subprocess.TimeoutExpired):
            return UNKNOWN
        return parse_k8s_status(_output(proc))

    def stop(self, dep: Deployment, timeout: float = 30) -> None:
        if not dep.submission_id:
            return
        proc = self._run(self.kill_command(dep), timeout=max(timeout, 30))
        if proc.returncode != 0:
            raise RuntimeError(
                f"killing {dep.submission_id} failed (exit {proc.returncode}): {_output(proc)[-2000:]}"
            )
        self._poll_stopped(dep, timeout, f"driver pod {dep.submission_id}")


_YARN_APP = re.compile(r"\bapplication_\d+_\d+\b")


def parse_yarn_submission(text: str) -> str | None:
    """The YARN application id from a cluster-mode spark-submit's output."""
    submitted = re.search(r"Submitted application (application_\d+_\d+)", text)
    if submitted:
        return submitted.group(1)
    any_id = _YARN_APP.search(text)
    return any_id.group(0) if any_id else None


def parse_yarn_status(text: str) -> str:
    """The application state from ``yarn application -status`` output."""
    if re.search(r"doesn't exist in RM|ApplicationNotFoundException", text):
        return DEAD
    # Anchored at the line start so "Final-State : UNDEFINED" is not taken for the state.
    match = re.search(r"^\s*State\s*:\s*(\w+)", text, re.MULTILINE)
    if not match:
        return UNKNOWN
    state = match.group(1).upper()
    if state in ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING"):
        return RUNNING
    if state in ("FINISHED", "FAILED", "KILLED"):
        return DEAD
    return UNKNOWN


class YarnLauncher(_ClusterLauncher):
    name = "yarn"
    wait_conf = "spark.yarn.submit.waitAppCompletion"

    def __init__(self, *, yarn: str = "yarn", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.yarn = yarn

    def launch(self, stream: str, cmd: list[str], env: dict[str, str], log: Path) -> Deployment:
        started = time.time()
        cmd, out = self._submit(stream, cmd, env, log)
        spark_app_id = parse_yarn_submission(out)
        if spark_app_id is None:
            raise RuntimeError(
                f"spark-submit of {stream} succeeded but printed no YARN application id, so the "
                f"driver cannot be tracked; check `yarn application -list` and the output in {log}"
            )
        return Deployment(
            stream=stream,
            launcher=self.name,
            spark_app_id=spark_app_id,
            log=str(log),
            master=submit_option(cmd, "--master") or "yarn",
            started_at=started,
        )

    def status_command(self, dep: Deployment) -> list[str]:
        return [self.yarn, "application", "-status", dep.spark_app_id or ""]

    def kill_command(self, dep: Deployment) -> list[str]:
        return [self.yarn, "application", "-kill", dep.spark_app_id or ""]

    def status(self, dep: Deployment) -> str:
        if not dep.spark_app_id:
            return UNKNOWN
        try:
            proc = self._run(self.status_command(dep))
        except (OSError, subprocess.TimeoutExpired):
            return UNKNOWN
        return parse_yarn_status(_output(proc))

    def stop(self, dep: Deployment, timeout: float = 30) -> None:
        if not dep.spark_app_id:
            return
        proc = self._run(self.kill_command(dep), timeout=max(timeout, 30))
        out = _output(proc)
        # Killing an application that already ended is not an error worth failing a stop for.
        if proc.returncode != 0 and "already finished" not in out:
            raise RuntimeError(
                f"killing {dep.spark_app_id} failed (exit {proc.returncode}): {out[-2000:]}"
            )
        self._poll_stopped(dep, timeout, f"YARN application {dep.spark_app_id}")


# --------------------------------------------------------------------------- choice

LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (LocalLauncher, StandaloneLauncher, KubernetesLauncher, YarnLauncher)
}


def launcher_for(master: str, name: str | None = None) -> Launcher:
    """The launcher named ``name``, else the one the Spark master implies."""
    if name is None:
        if master.startswith("local"):
            name = "local"
        elif master.startswith("spark://"):
            name = "standalone"
        elif master.startswith("k8s://"):
            name = "kubernetes"
        elif master == "yarn" or master.startswith("yarn"):
            name = "yarn"
        else:
            raise ValueError(
                f"no launcher for Spark master {master!r}: expected local[...], spark://, "
                "k8s:// or yarn"
            )
    try:
        return LAUNCHERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown launcher {name!r}: expected one of {sorted(LAUNCHERS)}"
        ) from None
