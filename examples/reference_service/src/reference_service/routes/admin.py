"""``/api/admin``: the dead-letter queue, and the simulated relayer's fault injection.

A bearer token (``BASTION_SERVICE_ADMIN_TOKEN``) guards every route: 401 without one, 403
with a wrong one, compared in constant time so response times do not leak it.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from reference_service.jobs.queue import DLQ, JobNotFound, JobState
from reference_service.problems import ProblemError
from reference_service.relayer import RedisChain, SimulatedChain
from reference_service.routes import service_of
from reference_service.routes.claims import problems
from reference_service.schemas import DLQJob, DLQPage, Faults, RetryResult
from reference_service.service import ReferenceService

__all__ = ["require_admin", "router"]


def require_admin(request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"www-authenticate": 'Bearer realm="admin"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401, "unauthorized", "an admin bearer token is required", headers=challenge
        )
    expected = service_of(request).settings.admin_token.encode()
    if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), expected):
        raise ProblemError(403, "forbidden", "this token is not the admin token")


router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])
Service = Annotated[ReferenceService, Depends(service_of)]


@router.get(
    "/api/admin/dlq",
    response_model=DLQPage,
    responses=problems(401, 403, 422),
    summary="Jobs that exhausted their attempts, newest first",
)
async def list_dlq(
    service: Service,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DLQPage:
    states = [JobState.WAITING, JobState.DELAYED]
    jobs = await service.queue.list(DLQ, states, offset=offset, limit=limit)
    counts = await service.queue.counts(DLQ)
    total = sum(counts[state] for state in states)
    items = [
        DLQJob(
            id=job.id,
            name=job.name,
            original_queue=str(job.data.get("original_queue")),
            original_job_id=job.data.get("original_job_id"),
            reason=str(job.data.get("reason")),
            attempts_made=int(job.data.get("attempts_made", 0)),
            data=dict(job.data.get("data") or {}),
            created_at=job.created_at,
        )
        for job in jobs
    ]
    following = offset + len(items)
    return DLQPage(
        items=items,
        total=total,
        offset=offset,
        limit=limit,
        next_offset=following if following < total else None,
    )


@router.post(
    "/api/admin/dlq/{job_id}/retry",
    status_code=202,
    response_model=RetryResult,
    responses=problems(401, 403, 404),
    summary="Re-enqueue a dead-lettered job to its original queue",
)
async def retry_dlq(job_id: str, service: Service) -> RetryResult:
    try:
        job = await service.queue.retry(job_id)
    except JobNotFound:
        raise ProblemError(
            404, "job-not-found", f"there is no job {job_id!r} in the dead-letter queue"
        ) from None
    return RetryResult(retried=job_id, queue=job.queue, job_id=job.id, state=job.state.value)


def _chain(service: ReferenceService) -> SimulatedChain | RedisChain:
    if not isinstance(service.relayer, SimulatedChain | RedisChain):
        raise ProblemError(404, "not-simulated", "fault injection exists on the simulated chain")
    return service.relayer


@router.get("/api/admin/relayer/faults", response_model=Faults, responses=problems(401, 403, 404))
async def get_faults(service: Service) -> Faults:
    fail_rate, hang_rate = await _chain(service).faults()
    return Faults(fail_rate=fail_rate, hang_rate=hang_rate)


@router.put(
    "/api/admin/relayer/faults",
    response_model=Faults,
    responses=problems(401, 403, 404, 422),
    summary="Make a share of the simulated chain's sends fail or hang",
)
async def put_faults(faults: Faults, service: Service) -> Faults:
    if faults.fail_rate + faults.hang_rate > 1:
        raise ProblemError(422, "validation", "fail_rate + hang_rate cannot exceed 1")
    await _chain(service).set_faults(faults.fail_rate, faults.hang_rate)
    return faults
