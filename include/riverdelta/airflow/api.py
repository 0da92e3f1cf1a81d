"""A minimal client of Airflow's REST API v2 (JWT from the simple auth manager)."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_incrementing,
)

from riverdelta.airflow.env import ADMIN_USER, AirflowError, admin_password, api_url

# Failures before the request reached the server (urllib's URLError): safe to send again.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError, httpx.WriteTimeout)


def _retryable(exc: BaseException) -> bool:
    # A freshly parsed DAG or a busy SQLite answers 500 for a moment; 4xx are final.
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, _UNSENT)


class ApiClient:
    """A minimal Airflow REST API v2 client (JWT from the simple auth manager)."""

    def __init__(
        self, base: str | None = None, user: str = ADMIN_USER, password: str | None = None
    ):
        self.base = base or api_url()
        self.http = httpx.Client(base_url=self.base, timeout=30, follow_redirects=True)
        resp = self.http.post(
            "/auth/token", json={"username": user, "password": password or admin_password()}
        )
        self.token = resp.raise_for_status().json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str, body: dict | None = None, attempts: int = 6) -> dict:
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_incrementing(start=2, increment=2),  # 2, 4, 6 ... s
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                resp = self.http.request(method, f"/api/v2{path}", json=body)
                resp.raise_for_status()
                return resp.json() if resp.content else {}
        raise AssertionError("unreachable")

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", f"/dags/{dag_id}")
                return
            except httpx.HTTPStatusError:
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise AirflowError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")
