"""Detached, supervised processes tracked by pid files.

A pid file records the pid *and* the process start time (clock ticks since
boot), so a pid reused by an unrelated process after a reboot or crash is
recognised as stale and never signalled. psutil reads the process table.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from riverdelta.config.settings import settings
from riverdelta.storage import files


@dataclass(frozen=True)
class ProcInfo:
    name: str
    pid: int
    start_ticks: int
    log: str
    cmd: list[str]
    started_at: float


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _ticks(proc: psutil.Process) -> int:
    # create_time() is boot time + start ticks read off the wall clock, so it moves when the
    # clock is set; the ticks since boot do not, and pid files and Deployments already hold them.
    return round((proc.create_time() - psutil.boot_time()) * _CLOCK_TICKS)


def _start_ticks(pid: int) -> int | None:
    try:
        return _ticks(psutil.Process(pid))
    except (psutil.Error, ValueError):
        return None


def pid_file(name: str) -> Path:
    return settings().run_dir / f"{name}.pid"


def read(name: str) -> ProcInfo | None:
    path = pid_file(name)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return ProcInfo(**data)
    except (ValueError, TypeError):
        return None


def alive(info: ProcInfo | None) -> bool:
    if info is None:
        return False
    try:
        proc = psutil.Process(info.pid)
        # A zombie is dead for our purposes.
        return _ticks(proc) == info.start_ticks and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


def running(name: str) -> ProcInfo | None:
    """The live process for ``name``; a stale pid file is removed."""
    info = read(name)
    if alive(info):
        return info
    if info is not None:
        pid_file(name).unlink(missing_ok=True)
    return None


def start_detached(
    name: str,
    cmd: list[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcInfo:
    """Start ``cmd`` in its own session (it outlives its parent) and record it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    settings().run_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    ticks = _start_ticks(proc.pid) or 0
    info = ProcInfo(name, proc.pid, ticks, str(log), list(cmd), time.time())
    files.write_atomic(pid_file(name), json.dumps(info.__dict__))
    return info


def stop(name: str, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the recorded process group; True if something was stopped."""
    info = running(name)
    if info is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, sig)
    deadline = time.monotonic() + timeout
    # Not psutil.wait_procs: it waits for a zombie that is not our child (a container's pid 1
    # may never reap it), and a zombie is stopped for our purposes.
    while time.monotonic() < deadline and alive(info):
        reap(info.pid)
        time.sleep(0.2)
    if alive(info):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGKILL)
        while alive(info):
            reap(info.pid)
            time.sleep(0.1)
    pid_file(name).unlink(missing_ok=True)
    return True


def free_port() -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reap(pid: int) -> None:
    # A process started by this very process must be waited for, or it lingers as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is left in process group ``pgid``."""
    reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies wait for a parent to reap them; they hold no ports, memory or files.
    return any(_in_group_and_live(p, pgid) for p in psutil.process_iter())


def _in_group_and_live(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path | str, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
