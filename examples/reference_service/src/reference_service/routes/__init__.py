"""The HTTP surface, one router per concern."""

from __future__ import annotations

from fastapi import Request

from reference_service.service import ReferenceService

__all__ = ["service_of"]


def service_of(request: Request) -> ReferenceService:
    """The app's `ReferenceService` (a FastAPI dependency)."""
    service: ReferenceService = request.app.state.service
    return service
