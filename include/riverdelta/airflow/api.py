"""A minimal client of Airflow's REST API v2 (JWT from the simple auth manager)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from riverdelta.airflow.env import ADMIN_USER, AirflowError, admin_password, api_url


class ApiClient:
    """A minimal Airflow REST API v2 client (JWT from the simple auth manager)."""

    def __init__(
        self, base: str | None = None, user: str = ADMIN_USER, password: str | None = None
    ):
        self.base = base or api_url()
        body = json.dumps({"username": user, "password": password or admin_password()}).encode()
        req = urllib.request.Request(
            f"{self.base}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            self.token = json.loads(resp.read())["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, attempts: int = 6) -> dict:
        req = urllib.request.Request(
            f"{self.base}/api/v2{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                # A freshly parsed DAG or a busy SQLite answers 500 for a moment; 4xx are final.
                if exc.code < 500 or attempt == attempts - 1:
                    raise
            except urllib.error.URLError:
                if attempt == attempts - 1:
                    raise
            time.sleep(2 * (attempt + 1))
        raise AssertionError("unreachable")

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", f"/dags/{dag_id}")
                return
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise AirflowError(
                        f"DAG {dag_id} did not appear within {timeout:.0f}s"
                    ) from None
                time.sleep(3)

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        from datetime import UTC, datetime

        run = self.call(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"conf": conf or {}, "logical_date": datetime.now(UTC).isoformat()},
        )
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        from urllib.parse import quote

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise AirflowError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")
