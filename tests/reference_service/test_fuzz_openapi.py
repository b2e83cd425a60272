"""schemathesis against the embedded service's own ``/openapi.json``, in process.

Every operation gets schema-valid (positive) and schema-breaking (negative) requests;
every answer must be no 5xx and conform to the document: a declared status, the declared
content type, the declared body schema and headers, and negative data refused. The check
that schema-valid data is accepted is left out: an EIP-55 checksum, a program's budget or
an unregistered wallet cannot be said in JSON Schema, so a valid-looking request is
rightly refused (404, 409, 422) and the check would only measure the generator.
"""

from __future__ import annotations

import collections
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from reference_service.app import create_app
from reference_service.settings import ProgramSeed, ServiceSettings
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi import checks

FUZZ_ADMIN = "fuzz-admin-token"
EXAMPLES = 60
"""Per operation and mode: 13 operations x 2 modes x 60 stay within seconds in process."""
UNLIMITED = {
    "RL_REGISTER_PER_HOUR": "1000000",
    "RL_CLAIM_PER_HOUR": "1000000",
    "RL_WEBHOOK_PER_MIN": "1000000",
    "RL_HEALTH_PER_MIN": "1000000",
}
"""Rate limits out of the way, so the fuzzer reaches the handlers instead of 429s."""


@pytest.fixture
def fuzz_app(tmp_path: Path, migrated_template: Path) -> Iterator[FastAPI]:
    """The embedded app on a migrated SQLite copy; schemathesis runs its lifespan itself."""
    target = tmp_path / "service.db"
    shutil.copy(migrated_template, target)
    service_settings = ServiceSettings(
        database_url=f"sqlite+aiosqlite:///{target}",
        admin_token=FUZZ_ADMIN,
        webhook_secret="whsec_fuzz",
        programs=(ProgramSeed("demo", Decimal(1000), "Demo"),),
        relayer_timeout_seconds=1.0,
    )
    app = create_app(
        service_settings, registry=CollectorRegistry(), run_jobs=False, environ=UNLIMITED
    )
    yield app
    asgi.shutdown_lifespans()


def test_the_openapi_document_declares_what_the_middleware_answers(fuzz_app: FastAPI) -> None:
    """Keyed routes list the required Idempotency-Key header and its 400/409/413/422/503;
    rate-limited ones their 429; the webhook and admin routes need no key."""
    document = fuzz_app.openapi()
    register = document["paths"]["/api/register"]["post"]
    header = register["parameters"][0]
    assert header["name"] == "Idempotency-Key"
    assert header["in"] == "header"
    assert header["required"] is True
    assert header["schema"]["maxLength"] == 255
    assert {"400", "409", "413", "422", "429", "503"} <= register["responses"].keys()
    for path, method in (("/api/commerce/webhook", "post"), ("/api/admin/relayer/faults", "put")):
        names = [p["name"] for p in document["paths"][path][method].get("parameters", [])]
        assert "Idempotency-Key" not in names
    assert "429" in document["paths"]["/healthz"]["get"]["responses"]
    assert "429" not in document["paths"]["/api/intents/{intent_id}"]["get"]["responses"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    fuzz_app: FastAPI,
) -> None:
    """Positive and negative cases on every operation: zero 5xx, every answer conforms."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # changing the relayer's faults last keeps the sends of the other operations healthy
    operations.sort(key=lambda op: op.label == "PUT /api/admin/relayer/faults")
    statuses: collections.Counter[int] = collections.Counter()
    tried = 0
    nothing_to_negate: list[str] = []
    admin = {"Authorization": f"Bearer {FUZZ_ADMIN}"}

    def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str] | None) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            nonlocal tried
            response = case.call(headers=headers)
            tried += 1
            statuses[response.status_code] += 1
            case.validate_response(
                response, headers=headers, excluded_checks=[checks.positive_data_acceptance]
            )

        run()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # admin routes are fuzzed past their guard too: positive cases carry the token
            headers = admin if "/admin/" in operation.path and mode.is_positive else None
            try:
                fuzz(operation, mode, headers)
            except Unsatisfiable:
                # an operation without parameters or body has nothing to break
                assert mode is GenerationMode.NEGATIVE
                nothing_to_negate.append(operation.label)

    print(
        f"\nschemathesis: {tried} requests over {len(operations)} operations, "
        f"statuses {dict(sorted(statuses.items()))}, nothing to negate on {nothing_to_negate}"
    )
    assert tried >= len(operations) * 2
    assert not [status for status in statuses if status >= 500]
    assert statuses[201] > 0  # some registrations really went through
