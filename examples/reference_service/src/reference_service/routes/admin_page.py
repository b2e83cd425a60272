"""``/admin``: the operator's page, rendered on the server (no front-end build step).

Behind the admin token: a form posts it once, and a ``SameSite=Strict``, ``HttpOnly`` cookie
carries it after (compared in constant time, as the bearer token of the admin API is). The
page shows request and 429 counts, idempotency replays and conflicts, queue depths, the
dead-letter queue with a retry button per job, and the ledger balance per program.
"""

from __future__ import annotations

import hmac
from html import escape
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from reference_service.amounts import UNIT
from reference_service.jobs.queue import DLQ, QUEUES, JobNotFound, JobState
from reference_service.routes import service_of
from reference_service.service import ReferenceService

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
Service = Annotated[ReferenceService, Depends(service_of)]
COOKIE = "bastion_admin"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem}
th{background:#f4f4f4;text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def _authorised(request: Request, service: ReferenceService) -> bool:
    given = request.cookies.get(COOKIE, "")
    expected = service.settings.admin_token.encode()
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected)


def _login(error: str = "", status: int = 200) -> HTMLResponse:
    message = f"<p class='bad' role='alert'>{escape(error)}</p>" if error else ""
    return _page(
        "bastion service: sign in",
        f"{message}<form method='post' action='/admin/login'>"
        "<label>Admin token <input type='password' name='token' autocomplete='off' "
        "required></label> <button type='submit'>Sign in</button></form>",
        status,
    )


def _total(service: ReferenceService, name: str, **labels: str) -> float:
    total = 0.0
    for family in service.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@router.get("/admin")
async def admin_page(request: Request, service: Service) -> Response:
    if not _authorised(request, service):
        return _login()
    requests = _total(service, "bastion_http_requests_total")
    limited = _total(service, "bastion_ratelimit_decisions_total", outcome="limited")
    replayed = _total(service, "bastion_idempotency_decisions_total", outcome="replayed")
    conflicts = _total(
        service, "bastion_idempotency_decisions_total", outcome="conflict_in_flight"
    ) + _total(service, "bastion_idempotency_decisions_total", outcome="payload_mismatch")
    counters = _table(
        ["requests", "429s", "idempotent replays", "conflicts"],
        [[f"{requests:g}", f"{limited:g}", f"{replayed:g}", f"{conflicts:g}"]],
    )
    depth_rows = []
    for name in QUEUES:
        counts = await service.queue.counts(name)
        depth_rows.append([escape(name), *(str(counts[state]) for state in JobState)])
    depths = _table(["queue", *(state.value for state in JobState)], depth_rows)
    dead = await service.queue.list(DLQ, [JobState.WAITING, JobState.DELAYED], limit=100)
    dlq_rows = [
        [
            f"<code>{escape(job.id)}</code>",
            escape(str(job.data.get("original_queue"))),
            escape(str(job.data.get("reason"))),
            escape(str((job.data.get("data") or {}).get("intent_id", ""))),
            f"<form method='post' action='/admin/dlq/{escape(job.id)}/retry'>"
            f"<button type='submit' data-job='{escape(job.id)}'>Retry</button></form>",
        ]
        for job in dead
    ]
    dlq = (
        _table(["job", "queue", "reason", "intent", ""], dlq_rows)
        if dlq_rows
        else "<p id='dlq-empty'>The dead-letter queue is empty.</p>"
    )
    async with service.db.read() as repo:
        sums = await repo.ledger_sums()
        programs = await repo.programs()
    ledger = _table(
        ["program", "ledger sum (must be 0)"],
        [
            [
                escape(program.id),
                f"<span class='{'ok' if sums.get(program.id, 0) == 0 else 'bad'}'>"
                f"{sums.get(program.id, 0) / UNIT:g}</span>",
            ]
            for program in programs
        ],
    )
    notice = escape(request.query_params.get("notice", ""))
    return _page(
        "bastion service: operations",
        (f"<p role='status'>{notice}</p>" if notice else "")
        + f"<h2>Traffic (this process)</h2>{counters}<h2>Queues</h2>{depths}"
        + f"<h2>Dead-letter queue</h2><div id='dlq'>{dlq}</div><h2>Ledger</h2>{ledger}",
    )


@router.post("/admin/login")
async def admin_login(request: Request, service: Service) -> Response:
    # the form is parsed by hand: one field does not need a multipart parser dependency
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    if not hmac.compare_digest(
        token.encode("utf-8", "replace"), service.settings.admin_token.encode()
    ):
        return _login("That is not the admin token.", 403)
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", path="/admin", max_age=8 * 3600
    )
    return response


@router.post("/admin/dlq/{job_id}/retry")
async def admin_retry(job_id: str, request: Request, service: Service) -> Response:
    if not _authorised(request, service):
        return _login("Sign in first.", 401)
    try:
        job = await service.queue.retry(job_id)
    except JobNotFound:
        notice = f"No job {job_id} in the dead-letter queue."
    else:
        notice = f"Job {job_id} went back to {job.queue}."
    return RedirectResponse(f"/admin?{urlencode({'notice': notice})}", status_code=303)
