from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from riverdelta.airflow.api import ApiClient
from riverdelta.airflow.env import AirflowError

pytestmark = pytest.mark.unit


class FakeAirflow(BaseHTTPRequestHandler):
    """Answers from ``server.answers`` (path -> list of (status, body)), the last one repeating."""

    def _answer(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(size)) if size else None
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.path == "/auth/token":
            status, out = 201, {"access_token": "jwt-1"}
        else:
            queue = self.server.answers.get(self.path, [(404, {"detail": "not found"})])
            status, out = queue.pop(0) if len(queue) > 1 else queue[0]
        raw = b"" if out is None else json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def airflow() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAirflow)
    server.seen, server.answers = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client(server: ThreadingHTTPServer) -> ApiClient:
    return ApiClient(f"http://127.0.0.1:{server.server_port}", password="pw")


def test_token_then_bearer_calls(airflow, slept):
    airflow.answers["/api/v2/dags/d/dagRuns"] = [(200, {"dag_run_id": "manual__1"})]
    api = client(airflow)
    assert api.trigger("d", {"action": "deploy"}) == "manual__1"
    (_, _, _, login), (method, path, auth, body) = airflow.seen
    assert login == {"username": "admin", "password": "pw"}
    assert (method, path, auth) == ("POST", "/api/v2/dags/d/dagRuns", "Bearer jwt-1")
    assert body["conf"] == {"action": "deploy"} and body["logical_date"]


def test_5xx_is_retried_with_growing_waits_and_4xx_is_final(airflow, slept):
    airflow.answers["/api/v2/dags/d"] = [(500, {}), (503, {}), (200, {"dag_id": "d"})]
    api = client(airflow)
    assert api.call("GET", "/dags/d") == {"dag_id": "d"}
    assert slept == [2, 4]
    airflow.answers["/api/v2/dags/e"] = [(409, {"detail": "exists"})]
    with pytest.raises(httpx.HTTPStatusError):
        api.call("GET", "/dags/e")
    assert slept == [2, 4]
    airflow.answers["/api/v2/dags/f"] = [(500, {})]
    with pytest.raises(httpx.HTTPStatusError):
        api.call("GET", "/dags/f", attempts=3)
    assert slept == [2, 4, 2, 4]


def test_empty_body_and_quoted_run_id(airflow, slept):
    airflow.answers["/api/v2/dags/d/dagRuns/manual__1%2B00%3A00"] = [(200, {"state": "success"})]
    airflow.answers["/api/v2/pools"] = [(204, None)]
    api = client(airflow)
    assert api.wait_for_run("d", "manual__1+00:00") == "success"
    assert api.call("POST", "/pools", {"name": "p"}) == {}


def test_connection_refused_is_retried_then_raised(airflow, slept):
    api = client(airflow)
    airflow.shutdown()
    airflow.server_close()
    with pytest.raises(httpx.ConnectError):
        api.call("GET", "/dags/d", attempts=2)
    assert slept == [2]


def test_wait_for_dag_message(airflow, slept):
    api = client(airflow)
    with pytest.raises(AirflowError, match="DAG ghost did not appear within 0s"):
        api.wait_for_dag("ghost", timeout=0)
