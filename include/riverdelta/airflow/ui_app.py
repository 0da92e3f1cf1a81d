"""The Riverdelta page: a FastAPI app the Airflow 3 plugin mounts at ``/riverdelta``.

Airflow mounts a plugin's FastAPI app as it is: nothing in front of it checks a
login. Every route here therefore depends on ``authorized_user``, which asks
Airflow's own auth manager for the user behind the request's JWT (the UI's
``_token`` cookie, or an ``Authorization: Bearer`` header) and for the right to
read DAGs; an anonymous request gets 401 (the page: a redirect to Airflow's
login), a user without that right 403.

The page is rendered on the server, with inline SVG charts: no JavaScript build,
nothing fetched from outside. It is embedded in the Airflow UI (see
``plugins/riverdelta_ui.py``), so links to Airflow pages target the top window.
"""

from __future__ import annotations

import html
import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from riverdelta.airflow import dag_ids
from riverdelta.errors import RiverdeltaError

PREFIX = "/riverdelta"
REFRESH_SECONDS = 15

_bearer = HTTPBearer(auto_error=False)
_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#2563eb" '
    'stroke-width="2"><path d="M3 6c3 0 3 3 6 3s3-3 6-3 3 3 6 3M3 12c3 0 3 3 6 3s3-3 6-3 3 3 6 3'
    'M3 18c3 0 3 3 6 3s3-3 6-3 3 3 6 3"/></svg>'
)


class LoginRequired(RiverdeltaError):
    """Raised for an anonymous request to the page (as opposed to the JSON API)."""


async def authorized_user(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user

    try:
        user = await get_user(request, None, bearer)
    except HTTPException as exc:
        if request.url.path.rstrip("/") == PREFIX and exc.status_code == 401:
            raise LoginRequired from exc
        raise
    if not get_auth_manager().is_authorized_dag(method="GET", user=user):
        raise HTTPException(status_code=403, detail="reading DAGs is not allowed for this user")
    return user


User = Annotated[Any, Depends(authorized_user)]


def create_app() -> FastAPI:
    app = FastAPI(title="Riverdelta", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login(next_url=str(request.url))
        return RedirectResponse(login, status_code=302)

    @app.get("/icon.svg")
    def icon() -> Response:  # public: the navigation shows it before any page is read
        return Response(_ICON, media_type="image/svg+xml")

    @app.get("/", response_class=HTMLResponse)
    def page(user: User) -> HTMLResponse:
        from riverdelta.airflow.ui_data import overview

        return HTMLResponse(render_page(overview()))

    @app.get("/api/overview")
    def api_overview(user: User) -> JSONResponse:
        from riverdelta.airflow.ui_data import overview

        return JSONResponse(json.loads(json.dumps(overview(), default=str)))

    @app.get("/data-docs/{relative:path}")
    def data_docs(relative: str, user: User) -> FileResponse:
        from riverdelta.airflow.ui_data import data_docs_file

        found = data_docs_file(relative)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no Data Docs file {relative}")
        return FileResponse(found)

    @app.get("/failed-rows/{table}", response_class=HTMLResponse)
    def failed_rows(table: str, user: User, run_id: str | None = None) -> HTMLResponse:
        from riverdelta.quality.failures import failed_rows as read_failed

        rows = read_failed(table, run_id)[-100:]
        return HTMLResponse(render_failed_rows(table, run_id, rows))

    return app


# --------------------------------------------------------------------------- rendering

_STYLE = """
body{font:14px system-ui,sans-serif;margin:16px;color:#1f2937}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:20px 0 6px}
table{border-collapse:collapse;width:100%;margin-bottom:8px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#047857;font-weight:600} .bad{color:#b91c1c;font-weight:600} .muted{color:#6b7280}
.msg{background:#fef2f2;border:1px solid #fecaca;padding:6px 10px;margin:6px 0}
svg{vertical-align:middle} a{color:#1d4ed8}
"""


# Airflow embeds the page in an iframe sandboxed without allow-top-navigation (nor
# allow-popups), so a target="_top" link is blocked there, and so is a script in
# the frame setting the top window's location. The frame is same-origin with
# scripts allowed: it clicks an anchor it places in the UI's own document, whose
# navigation belongs to the top window. Opened on its own, links work as links.
_TOP_LINKS = """
document.addEventListener("click", (event) => {
  const link = event.target.closest('a[target="_top"]');
  if (!link || window.top === window) return;
  try {
    const doc = window.top.document;
    const anchor = doc.createElement("a");
    anchor.href = link.getAttribute("href");
    doc.body.appendChild(anchor);
    anchor.click();
    anchor.remove();
    event.preventDefault();
  } catch (err) {
    // not the UI's origin after all: leave the click to the browser
  }
});
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _dag(dag_id: str, label: str | None = None, run_id: str | None = None) -> str:
    href = f"/dags/{quote(dag_id)}" + (f"/runs/{quote(run_id)}" if run_id else "")
    return f'<a target="_top" href="{href}">{_e(label or dag_id)}</a>'


def sparkline(values: list[float | None], width: int = 160, height: int = 28) -> str:
    """An inline SVG polyline of ``values`` (None gaps skipped), scaled to its maximum."""
    points = [(i, v) for i, v in enumerate(values) if isinstance(v, int | float)]
    if len(points) < 2:
        return '<span class="muted">no data yet</span>'
    top = max(v for _, v in points) or 1.0
    step = width / max(1, len(values) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in points
    )
    return (
        f'<svg width="{width}" height="{height}" role="img"><title>max {top:g}</title>'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{coords}"/></svg>'
        f' <span class="muted">max {top:g}</span>'
    )


def _state(status: dict[str, Any]) -> str:
    good = status["actual"] == status["desired"]
    return f'<span class="{"ok" if good else "bad"}">{_e(status["actual"])}</span>'


def _streams_table(streams: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>stream</th><th>desired / actual</th><th>lag records</th><th>lag s</th>"
        "<th>last batch age s</th><th>rows/s in / out</th><th>restarts</th>"
        "<th>lag (records), last hours</th><th>batch duration (ms)</th><th>delay at commit (s)</th>"
        "<th>last error</th><th>DAGs</th></tr>"
    )
    rows = []
    for panel in streams:
        st, name = panel.get("status"), panel["stream"]
        dags = " · ".join(_dag(d, kind) for kind, d in panel["dags"].items())
        if st is None:
            rows.append(
                f'<tr data-stream="{_e(name)}"><td>{_e(name)}</td>'
                f'<td colspan="10"><div class="msg">{_e(panel.get("error"))}</div></td>'
                f"<td>{dags}</td></tr>"
            )
            continue
        series = panel.get("series") or []
        delay = ((panel.get("batches") or {}).get("delay")) or []
        kafka = st.get("kafka_error")
        lag = _e(st.get("lag_records")) if not kafka else '<span class="bad">Kafka?</span>'
        rows.append(
            f'<tr data-stream="{_e(name)}" data-desired="{_e(st["desired"])}" '
            f'data-actual="{_e(st["actual"])}" data-lag-records="{_e(st.get("lag_records"))}" '
            f'data-restarts="{_e(st.get("restarts_in_window"))}">'
            f"<td>{_dag(panel['dags']['stream'], name)}</td>"
            f"<td>{_e(st['desired'])} / {_state(st)}</td>"
            f'<td class="n">{lag}</td><td class="n">{_num(st.get("lag_seconds"))}</td>'
            f'<td class="n">{_num(st.get("last_batch_age_seconds"))}</td>'
            f'<td class="n">{_num(st.get("input_rows_per_second"))} / '
            f"{_num(st.get('processed_rows_per_second'))}</td>"
            f'<td class="n">{_e(st.get("restarts_in_window"))}</td>'
            f"<td>{sparkline([p.get('lag_records') for p in series])}</td>"
            f"<td>{sparkline([p.get('duration_ms') for p in series])}</td>"
            f"<td>{sparkline([d['seconds'] for d in delay])}</td>"
            f"<td>{_e(st.get('last_error') or '')}"
            + (f'<div class="msg">Kafka could not be read: {_e(kafka)}</div>' if kafka else "")
            + f"</td><td>{dags}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _version(v: int | None) -> str:
    return "-" if v is None else f"v{v}"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return _e(value)


def _tables_table(tables: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>table</th><th>latest</th><th>validated</th><th>behind</th>"
        "<th>rows latest / validated</th><th>last validation</th><th>Data Docs</th>"
        "<th>failed rows</th><th>gate</th></tr>"
    )
    rows = []
    for t in tables:
        last = t.get("last_validation")
        if last is None:
            verdict = '<span class="muted">not validated yet</span>'
        elif last["success"]:
            verdict = f'<span class="ok">passed</span> {_e(last["validated_at"][:19])}'
        else:
            failed = ", ".join(last["failed"]) or "failed"
            verdict = f'<span class="bad">FAILED</span> {_e(failed)}'
        docs = (
            f'<a href="{PREFIX}/data-docs/{quote(t["data_docs"])}">results</a>'
            if t.get("data_docs")
            else '<span class="muted">-</span>'
        )
        failed_link = (
            f'<a href="{PREFIX}/failed-rows/{quote(t["table"])}?run_id={quote(last["run_id"])}">'
            "rows</a>"
            if last and not last["success"]
            else '<span class="muted">-</span>'
        )
        gate = _dag(dag_ids.quality(t["stream"])) if t.get("stream") else "-"
        rows.append(
            f'<tr data-table="{_e(t["table"])}" data-latest="{_e(t["latest_version"])}" '
            f'data-validated="{_e(t["validated_version"])}" data-rows="{_e(t["rows_latest"])}">'
            f'<td>{_e(t["table"])}</td><td class="n">{_version(t["latest_version"])}</td>'
            f'<td class="n">{_version(t["validated_version"])}</td>'
            f'<td class="n">{_e(t["versions_behind"])}</td>'
            f'<td class="n">{_e(t["rows_latest"])} / {_e(t["rows_validated"])}</td>'
            f"<td>{verdict}</td><td>{docs}</td><td>{failed_link}</td>"
            f"<td>{gate}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _quarantine(streams: list[dict[str, Any]]) -> str:
    parts = []
    for panel in streams:
        b = panel.get("batches")
        if b is None:
            parts.append(f'<div class="msg">{_e(panel.get("batches_error"))}</div>')
            continue
        total = b["quarantine_total"]
        if not total:
            parts.append(f"<p>{_e(panel['stream'])}: nothing quarantined in this window</p>")
            continue
        buckets = b["quarantine"]
        rows = "".join(
            f'<tr data-quarantine="{_e(panel["stream"])}:{_e(reason)}" data-count="{n}">'
            f'<td>{_e(panel["stream"])}</td><td>{_e(reason)}</td><td class="n">{n}</td>'
            f"<td>{sparkline([buckets[k].get(reason, 0) for k in buckets])}</td></tr>"
            for reason, n in sorted(total.items(), key=lambda kv: -kv[1])
        )
        parts.append(
            "<table><tr><th>stream</th><th>reason</th><th>records</th>"
            f"<th>per 10 minutes</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _backfills(streams: list[dict[str, Any]]) -> str:
    rows = []
    for panel in streams:
        for b in panel.get("backfills") or []:
            good = b["outcome"] in ("ok", "dry_run")
            run = (
                _dag(panel["dags"]["backfill"], b["run_id"], b["run_id"])
                if b.get("run_id")
                else "-"
            )
            rows.append(
                f'<tr data-backfill="{_e(b.get("run_id"))}" data-outcome="{_e(b["outcome"])}">'
                f"<td>{_e(b['at'])}</td><td>{_e(panel['stream'])}</td><td>{_e(b['mode'])}</td>"
                f'<td class="{"ok" if good else "bad"}">{_e(b["outcome"])}</td>'
                f'<td class="n">{_e(b["records"])}</td>'
                f"<td>{_e(_when(b.get('first_timestamp')))} .. "
                f"{_e(_when(b.get('last_timestamp')))}</td>"
                f'<td class="n">{_e(b.get("paused_seconds"))}</td><td>{run}</td>'
                f"<td>{_e(b.get('reason') or '')}</td></tr>"
            )
    if not rows:
        return '<p class="muted">no backfill in the last 7 days</p>'
    return (
        "<table><tr><th>at</th><th>stream</th><th>mode</th><th>outcome</th><th>records</th>"
        "<th>event times</th><th>live paused s</th><th>DAG run</th><th>reason</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _when(t: Any) -> str | None:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M:%S") if t else None


def render_page(data: dict[str, Any]) -> str:
    streams = data["streams"]
    table_error = f'<div class="msg">{_e(data["error"])}</div>' if data.get("error") else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Riverdelta</title>'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><style>{_STYLE}</style></head>'
        f"<body><h1>Riverdelta</h1>"
        f'<p class="muted">as of {_e(data["generated_at"])} UTC; charts: last '
        f"{data['hours']:g} h; read in {data['seconds']:.2f} s; refreshes every "
        f"{REFRESH_SECONDS} s</p>"
        f"<h2>Streams</h2>{_streams_table(streams)}"
        f"<h2>Tables</h2>{table_error}{_tables_table(data['tables'])}"
        f"<h2>Quarantine by reason</h2>{_quarantine(streams)}"
        f"<h2>Backfills</h2>{_backfills(streams)}"
        f"<script>{_TOP_LINKS}</script></body></html>"
    )


def render_failed_rows(table: str, run_id: str | None, rows: list[dict[str, Any]]) -> str:
    body = "".join(
        f"<tr><td>{_e(r.get('expectation'))}</td><td>{_e(r.get('column'))}</td>"
        f"<td><code>{_e(json.dumps(r.get('row'), default=str))}</code></td></tr>"
        for r in rows
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(table)} failed rows</title>'
        f"<style>{_STYLE}</style></head><body>"
        f'<p><a href="{PREFIX}/">back to Riverdelta</a></p>'
        f'<h1>{_e(table)}: failed rows</h1><p class="muted">run {_e(run_id)}; '
        f"{len(rows)} shown, sensitive fields redacted as recorded</p>"
        "<table><tr><th>expectation</th><th>column</th><th>row</th></tr>"
        f"{body}</table></body></html>"
    )
