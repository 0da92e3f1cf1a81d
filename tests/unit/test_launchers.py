from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from riverdelta.launch import launchers, procs
from riverdelta.launch.launchers import (
    DEAD,
    RUNNING,
    UNKNOWN,
    Deployment,
    KubernetesLauncher,
    LocalLauncher,
    StandaloneLauncher,
    YarnLauncher,
    application_id_from_log,
    assert_no_secret_in_argv,
    launcher_for,
    parse_k8s_status,
    parse_k8s_submission,
    parse_yarn_status,
    parse_yarn_submission,
    split_submit,
    submit_option,
)

pytestmark = pytest.mark.unit


def hook_command(master: str = "local[2]", deploy_mode: str | None = "client") -> list[str]:
    """The shape SparkSubmitHook._build_spark_submit_command produces."""
    cmd = [
        "spark-submit",
        "--master",
        master,
        "--conf",
        "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        "--jars",
        "/cache/jars/spark/delta-spark_4.1_2.13-4.3.1.jar,/cache/jars/spark/kafka-clients-3.9.1.jar",
        "--driver-memory",
        "1g",
        "--name",
        "riverdelta-orders-live",
    ]
    if deploy_mode:
        cmd += ["--deploy-mode", deploy_mode]
    return [*cmd, "/app/spark_apps/ingest.py", "--stream", "orders", "--mode", "live"]


APP = ["/app/spark_apps/ingest.py", "--stream", "orders", "--mode", "live"]


# --------------------------------------------------------------------------- Deployment


def test_deployment_round_trips_through_json():
    dep = Deployment(
        stream="orders",
        launcher="kubernetes",
        spark_app_id="spark-3c2b",
        submission_id="riverdelta:orders-driver",
        log="/logs/stream-orders.log",
        master="k8s://https://api:6443",
        started_at=1_700_000_000.5,
    )
    assert Deployment.from_dict(json.loads(json.dumps(dep.to_dict()))) == dep
    # State files written before the rename keep loading: the stored key is still app_id.
    assert dep.to_dict()["app_id"] == "spark-3c2b" and "spark_app_id" not in dep.to_dict()
    assert dep.deployment_id == "spark-3c2b"


def test_deployment_from_dict_ignores_unknown_keys():
    dep = Deployment.from_dict({"stream": "s", "launcher": "local", "pid": 7, "future_field": 1})
    assert (dep.stream, dep.pid, dep.start_ticks) == ("s", 7, None)


# --------------------------------------------------------------------------- argv


def test_split_submit_separates_options_from_application():
    binary, options, app = split_submit(hook_command())
    assert binary == "spark-submit"
    assert app == APP
    assert options[-2:] == ["--deploy-mode", "client"]


def test_submit_option_reads_only_spark_submit_options():
    cmd = [*hook_command(deploy_mode=None)[:-1], "--master", "app-arg"]
    assert submit_option(cmd, "--master") == "local[2]"
    assert submit_option(cmd, "--deploy-mode") is None
    assert (
        submit_option(["spark-submit", "--verbose", "--master=yarn", "a.py"], "--master") == "yarn"
    )


@pytest.mark.parametrize(
    ("launcher", "conf"),
    [
        (KubernetesLauncher(), "spark.kubernetes.submission.waitAppCompletion=false"),
        (YarnLauncher(), "spark.yarn.submit.waitAppCompletion=false"),
    ],
)
def test_cluster_command_switches_to_cluster_mode(launcher, conf):
    cmd = [
        *hook_command("k8s://https://api:6443")[: -len(APP)],
        "--conf",
        conf.replace("false", "true"),
        *APP,
    ]
    out = launcher.cluster_command(cmd)
    _, options, app = split_submit(out)
    assert app == APP
    assert submit_option(out, "--deploy-mode") == "cluster"
    assert options.count("--deploy-mode") == 1
    assert [options[i + 1] for i, o in enumerate(options) if o == "--conf"].count(conf) == 1
    assert conf.replace("false", "true") not in options
    assert "spark.sql.shuffle.partitions=2" in options


def test_local_launcher_refuses_cluster_mode():
    with pytest.raises(ValueError, match="cluster"):
        LocalLauncher().check_command(hook_command(deploy_mode="cluster"))


def test_standalone_forces_client_mode_and_needs_spark_master():
    launcher = StandaloneLauncher()
    cmd = launcher.check_command(hook_command("spark://spark-master:7077", deploy_mode=None))
    assert submit_option(cmd, "--deploy-mode") == "client"
    assert split_submit(cmd)[2] == APP
    with pytest.raises(ValueError, match="cluster"):
        launcher.check_command(hook_command("spark://spark-master:7077", deploy_mode="cluster"))
    with pytest.raises(ValueError, match="spark://"):
        launcher.check_command(hook_command("local[2]"))


# --------------------------------------------------------------------------- choice


@pytest.mark.parametrize(
    ("master", "name", "cls"),
    [
        ("local[2]", None, LocalLauncher),
        ("local[*]", None, LocalLauncher),
        ("spark://spark-master:7077", None, StandaloneLauncher),
        ("k8s://https://10.0.0.1:6443", None, KubernetesLauncher),
        ("yarn", None, YarnLauncher),
        ("local[2]", "yarn", YarnLauncher),
    ],
)
def test_launcher_for(master, name, cls):
    assert type(launcher_for(master, name)) is cls


def test_launcher_for_rejects_unknown():
    with pytest.raises(ValueError, match="no launcher"):
        launcher_for("mesos://m:5050")
    with pytest.raises(ValueError, match="unknown launcher"):
        launcher_for("local[2]", "docker")


# --------------------------------------------------------------------------- secrets


def test_secret_in_argv_is_refused_without_echoing_it():
    cmd = [*hook_command()[:3], "--conf", "spark.hadoop.fs.s3a.secret.key=hunter2-long", *APP]
    with pytest.raises(ValueError) as err:
        assert_no_secret_in_argv(cmd, ["hunter2-long"])
    assert "hunter2-long" not in str(err.value)
    assert "spark.hadoop.fs.s3a.secret.key" in str(err.value)
    assert_no_secret_in_argv(hook_command(), ["hunter2-long", ""])


def test_launch_refuses_argv_carrying_an_env_secret(tmp_path):
    calls = []
    launcher = KubernetesLauncher(runner=lambda *a, **k: calls.append(a))
    cmd = [*hook_command("k8s://https://api:6443")[:3], "--conf", "spark.x.token=tok-123456", *APP]
    with pytest.raises(ValueError, match="secret"):
        launcher.launch("orders", cmd, {"KAFKA_TOKEN": "tok-123456"}, tmp_path / "log")
    assert calls == []


# --------------------------------------------------------------------------- Kubernetes

K8S_SUBMIT_OUTPUT = """\
25/06/01 10:00:01 WARN Utils: Kubernetes master URL uses HTTP instead of HTTPS.
25/06/01 10:00:02 INFO SparkKubernetesClientFactory: Auto-configuring K8S client using current context from users K8S config file
25/06/01 10:00:03 INFO KerberosConfDriverFeatureStep: You have not specified a krb5.conf file locally or via a ConfigMap.
25/06/01 10:00:04 INFO LoggingPodStatusWatcherImpl: State changed, new state:
\t pod name: riverdelta-orders-live-8f1c2a9d3b-driver
\t namespace: riverdelta
\t phase: Pending
25/06/01 10:00:04 INFO LoggingPodStatusWatcherImpl: Deployed Spark application riverdelta-orders-live with application ID spark-4f9a8c7e2b1d4c0f9e8d7c6b5a4f3e2d and submission ID riverdelta:riverdelta-orders-live-8f1c2a9d3b-driver into Kubernetes
25/06/01 10:00:04 INFO ShutdownHookManager: Shutdown hook called
"""

K8S_STATUS_RUNNING = """\
Submitting a request for the status of submission riverdelta:riverdelta-orders-live-8f1c2a9d3b-driver in k8s://https://10.0.0.1:6443.
Application status (driver):
\t pod name: riverdelta-orders-live-8f1c2a9d3b-driver
\t namespace: riverdelta
\t labels: spark-app-name -> riverdelta-orders-live, spark-app-selector -> spark-4f9a8c7e2b1d4c0f9e8d7c6b5a4f3e2d, spark-role -> driver, spark-version -> 4.1.1
\t pod uid: 0b6f0c5e-1c1d-4f63-9d8c-6a2b8e0d9f11
\t creation time: 2025-06-01T10:00:04Z
\t service account name: spark
\t volumes: spark-local-dir-1, spark-conf-volume-driver, kube-api-access-6xq2n
\t node name: worker-2
\t start time: 2025-06-01T10:00:04Z
\t phase: Running
\t container status:
\t\t container name: spark-kubernetes-driver
\t\t container image: registry.local/riverdelta-spark:4.1.1
\t\t container state: running
\t\t container started at: 2025-06-01T10:00:09Z
"""


def test_parse_k8s_submission():
    assert parse_k8s_submission(K8S_SUBMIT_OUTPUT) == (
        "spark-4f9a8c7e2b1d4c0f9e8d7c6b5a4f3e2d",
        "riverdelta:riverdelta-orders-live-8f1c2a9d3b-driver",
    )
    assert parse_k8s_submission("nothing here") == (None, None)


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Running", RUNNING),
        ("Pending", RUNNING),
        ("Succeeded", DEAD),
        ("Failed", DEAD),
        ("Error", DEAD),
        ("Unknown", UNKNOWN),
    ],
)
def test_parse_k8s_status(phase, expected):
    assert (
        parse_k8s_status(K8S_STATUS_RUNNING.replace("phase: Running", f"phase: {phase}"))
        == expected
    )


def test_parse_k8s_status_gone_or_unreadable():
    assert parse_k8s_status("Submitting a request...\nApplication not found.\n") == DEAD
    assert parse_k8s_status("Exception in thread main: connection refused") == UNKNOWN


class FakeRunner:
    def __init__(self, *outputs: tuple[int, str]) -> None:
        self.outputs = list(outputs)
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        assert isinstance(cmd, list)
        assert not kwargs.get("shell")
        self.calls.append(cmd)
        rc, out = self.outputs.pop(0)
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr=out)


def test_kubernetes_launch_status_stop(tmp_path):
    runner = FakeRunner(
        (0, K8S_SUBMIT_OUTPUT),
        (0, K8S_STATUS_RUNNING),
        (0, "Deleting driver pod riverdelta-orders-live-8f1c2a9d3b-driver"),
        (0, "Application not found."),
    )
    launcher = KubernetesLauncher(runner=runner)
    master = "k8s://https://10.0.0.1:6443"
    log = tmp_path / "stream-orders.log"
    dep = launcher.launch("orders", hook_command(master), {"PATH": "/usr/bin"}, log)

    submitted = runner.calls[0]
    assert submit_option(submitted, "--deploy-mode") == "cluster"
    assert "spark.kubernetes.submission.waitAppCompletion=false" in submitted
    assert dep.submission_id == "riverdelta:riverdelta-orders-live-8f1c2a9d3b-driver"
    assert dep.spark_app_id == "spark-4f9a8c7e2b1d4c0f9e8d7c6b5a4f3e2d"
    assert (dep.launcher, dep.master, dep.pid) == ("kubernetes", master, None)
    assert "Deployed Spark application" in log.read_text()

    assert launcher.status(dep) == RUNNING
    assert runner.calls[1] == ["spark-submit", "--master", master, "--status", dep.submission_id]
    launcher.stop(dep, timeout=0)
    assert runner.calls[2] == ["spark-submit", "--kill", dep.submission_id, "--master", master]
    assert runner.calls[3][3] == "--status"


def test_kubernetes_launch_failure_shows_output(tmp_path):
    runner = FakeRunner((1, "Exception in thread main: Forbidden: pods is forbidden"))
    with pytest.raises(RuntimeError, match="pods is forbidden"):
        KubernetesLauncher(runner=runner).launch(
            "orders", hook_command("k8s://https://api:6443"), {}, tmp_path / "log"
        )


def test_status_is_unknown_when_the_cli_is_missing():
    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    dep = Deployment("orders", "kubernetes", submission_id="ns:pod", master="k8s://x")
    assert KubernetesLauncher(runner=missing).status(dep) == UNKNOWN
    assert (
        YarnLauncher(runner=missing).status(
            Deployment("orders", "yarn", spark_app_id="application_1_1")
        )
        == UNKNOWN
    )


# --------------------------------------------------------------------------- YARN

YARN_SUBMIT_OUTPUT = """\
25/06/01 10:00:01 INFO DefaultNoHARMFailoverProxyProvider: Connecting to ResourceManager at rm/10.0.0.5:8032
25/06/01 10:00:02 INFO Client: Requesting a new application from cluster with 3 NodeManagers
25/06/01 10:00:03 INFO Client: Submitting application application_1748771234567_0042 to ResourceManager
25/06/01 10:00:03 INFO YarnClientImpl: Submitted application application_1748771234567_0042
25/06/01 10:00:04 INFO Client: Application report for application_1748771234567_0042 (state: ACCEPTED)
25/06/01 10:00:04 INFO Client:
\t client token: N/A
\t diagnostics: AM container is launched, waiting for AM container to Register with RM
\t queue: default
\t final status: UNDEFINED
\t tracking URL: http://rm:8088/proxy/application_1748771234567_0042/
"""

YARN_STATUS = """\
25/06/01 10:05:00 INFO client.DefaultNoHARMFailoverProxyProvider: Connecting to ResourceManager at rm/10.0.0.5:8032
Application Report :
\tApplication-Id : application_1748771234567_0042
\tApplication-Name : riverdelta-orders-live
\tApplication-Type : SPARK
\tUser : airflow
\tQueue : default
\tApplication Priority : 0
\tStart-Time : 1748772003000
\tFinish-Time : 0
\tProgress : 10%
\tState : RUNNING
\tFinal-State : UNDEFINED
\tTracking-URL : http://driver-host:4040
\tRPC Port : 38713
\tAM Host : worker-1
\tAggregate Resource Allocation : 1234567 MB-seconds, 602 vcore-seconds
\tLog Aggregation Status : NOT_START
\tDiagnostics :
\tUnmanaged Application : false
"""


def test_parse_yarn_submission():
    assert parse_yarn_submission(YARN_SUBMIT_OUTPUT) == "application_1748771234567_0042"
    assert parse_yarn_submission("no id") is None


@pytest.mark.parametrize(
    ("state", "final", "expected"),
    [
        ("RUNNING", "UNDEFINED", RUNNING),
        ("ACCEPTED", "UNDEFINED", RUNNING),
        ("SUBMITTED", "UNDEFINED", RUNNING),
        ("FINISHED", "SUCCEEDED", DEAD),
        ("FAILED", "FAILED", DEAD),
        ("KILLED", "KILLED", DEAD),
    ],
)
def test_parse_yarn_status(state, final, expected):
    text = YARN_STATUS.replace("State : RUNNING", f"State : {state}").replace(
        "Final-State : UNDEFINED", f"Final-State : {final}"
    )
    assert parse_yarn_status(text) == expected


def test_parse_yarn_status_missing_app_and_garbage():
    gone = "Application with id 'application_1748771234567_0042' doesn't exist in RM."
    assert parse_yarn_status(gone) == DEAD
    assert parse_yarn_status("Final-State : FAILED\n") == UNKNOWN
    assert parse_yarn_status("java.net.ConnectException: Connection refused") == UNKNOWN


def test_yarn_launch_status_stop(tmp_path):
    runner = FakeRunner(
        (0, YARN_SUBMIT_OUTPUT),
        (0, YARN_STATUS),
        (0, "Killing application application_1748771234567_0042"),
        (0, YARN_STATUS.replace("State : RUNNING", "State : KILLED")),
    )
    launcher = YarnLauncher(runner=runner)
    dep = launcher.launch("orders", hook_command("yarn"), {}, tmp_path / "log")
    assert submit_option(runner.calls[0], "--deploy-mode") == "cluster"
    assert "spark.yarn.submit.waitAppCompletion=false" in runner.calls[0]
    assert dep.spark_app_id == "application_1748771234567_0042"
    assert launcher.status(dep) == RUNNING
    assert runner.calls[1] == ["yarn", "application", "-status", dep.spark_app_id]
    launcher.stop(dep, timeout=0)
    assert runner.calls[2] == ["yarn", "application", "-kill", dep.spark_app_id]


def test_yarn_stop_that_does_not_take_effect_raises(tmp_path):
    runner = FakeRunner((0, "Killing application application_1_0001"), (0, YARN_STATUS))
    dep = Deployment("orders", "yarn", spark_app_id="application_1_0001", master="yarn")
    with pytest.raises(RuntimeError, match="still runs"):
        YarnLauncher(runner=runner).stop(dep, timeout=0)


# --------------------------------------------------------------------------- local


def test_application_id_from_log():
    log = (
        "26/11/21 00:53:03 INFO SparkContext: Running Spark version 4.1.1\n"
        "2026-11-21 00:53:05 INFO riverdelta.stream.ingest: spark application id local-1763686385123\n"
    )
    assert application_id_from_log(log) == "local-1763686385123"
    assert application_id_from_log(
        "Connected to Spark cluster with app ID app-20261121005305-0007"
    ) == ("app-20261121005305-0007")
    assert application_id_from_log("no id; /tmp/spark-1f0c2e7a-9b1d-4c3e-8f00-aa11bb22cc33") is None


def test_application_id_is_read_after_this_launch_only(tmp_path):
    log = tmp_path / "stream-orders.log"
    old = "spark application id local-1700000000000\n"
    log.write_text(old + "restarting\n")
    dep = Deployment(
        "orders", "local", pid=1, start_ticks=1, log=str(log), log_offset=len(old) + 11
    )
    launcher = LocalLauncher()
    assert launcher.application_id(dep) is None
    with log.open("a") as f:
        f.write("spark application id local-1700000099999\n")
    assert launcher.refresh(dep).spark_app_id == "local-1700000099999"


def test_local_launcher_runs_a_detached_process(tmp_path):
    stream = f"unit-{uuid.uuid4().hex[:8]}"
    launcher = LocalLauncher()
    log = tmp_path / f"stream-{stream}.log"
    dep = launcher.launch(stream, ["sleep", "30"], dict(os.environ), log)
    try:
        assert dep.pid and dep.start_ticks and dep.host
        assert launcher.status(dep) == RUNNING
        assert os.getpgid(dep.pid) == dep.pid  # its own session and process group
        with pytest.raises(RuntimeError, match="already has a driver"):
            launcher.launch(stream, ["sleep", "30"], dict(os.environ), log)
        restored = Deployment.from_dict(json.loads(json.dumps(dep.to_dict())))
        launcher.stop(restored, timeout=10)
        assert launcher.status(restored) == DEAD
        assert not procs.pid_file(LocalLauncher.proc_name(stream)).exists()
    finally:
        if procs.alive(procs.read(LocalLauncher.proc_name(stream))):
            os.killpg(dep.pid, signal.SIGKILL)


def test_local_stop_never_signals_a_reused_pid(tmp_path):
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ticks = launchers.procs._start_ticks(other.pid)
        stale = Deployment("orders", "local", pid=other.pid, start_ticks=ticks + 1, log=None)
        assert LocalLauncher().status(stale) == DEAD
        LocalLauncher().stop(stale, timeout=1)
        assert other.poll() is None  # still alive: not ours to kill
    finally:
        other.kill()
        other.wait()


def test_local_status_elsewhere_is_unknown():
    dep = Deployment("orders", "local", pid=os.getpid(), start_ticks=1, host="another-host")
    assert LocalLauncher().status(dep) == UNKNOWN
    assert LocalLauncher().status(Deployment("orders", "local")) == UNKNOWN


def test_local_stop_escalates_to_sigkill_for_the_whole_group(tmp_path):
    stream = f"unit-{uuid.uuid4().hex[:8]}"
    launcher = LocalLauncher()
    # SIGTERM ignored by the leader and (inherited) by its child: only SIGKILL ends them.
    cmd = ["sh", "-c", "trap '' TERM; sleep 30 & echo ready; sleep 30; wait"]
    log = tmp_path / "log"
    dep = launcher.launch(stream, cmd, dict(os.environ), log)
    try:
        deadline = time.monotonic() + 10
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        launcher.stop(dep, timeout=0.5)
        assert time.monotonic() - started >= 0.5  # SIGTERM was ignored; SIGKILL ended it
        assert launcher.status(dep) == DEAD
        assert not procs.group_alive(dep.pid)
    finally:
        if procs.group_alive(dep.pid):
            os.killpg(dep.pid, signal.SIGKILL)
