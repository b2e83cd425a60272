"""A small app for the multiprocess test, served by real uvicorn worker processes.

prometheus_client picks its multiprocess mode when first imported, from
``PROMETHEUS_MULTIPROC_DIR``; the test sets it before starting the workers.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import MetricsMiddleware, metrics_app


async def work(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"{request.path_params['n']}:{len(body)}")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


app = MetricsMiddleware(
    Starlette(
        routes=[
            Route("/work/{n}", work, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/metrics", metrics_app),
        ]
    ),
    # sampled spans make every request an exemplar candidate, which multiprocess mode must drop
    tracer_provider=TracerProvider(),
)
