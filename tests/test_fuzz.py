"""Schemathesis fuzzes every operation of the app's own OpenAPI schema, logged in.

Fixed seed and a bounded number of examples per operation, so a CI run is repeatable and
takes well under a minute. FUZZ_EXAMPLES raises the count for a deeper local run.

Checks are named explicitly. Every default check runs except positive_data_acceptance:
the contract has rules that JSON Schema cannot state (a password of 8 to 72 bytes in
UTF-8, dates between 1900 and 9998, no NUL characters, a recurrence needs a due_date),
so a schema-valid request can rightly get 422.
"""

import os
import secrets
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

import better_auth
from main import app

FUZZ_USER_ID = 1  # the first user of the fresh database that every test gets
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
    use_after_free,
    ensure_resource_availability,
]

GENERATION = {
    "max-examples": int(os.environ.get("FUZZ_EXAMPLES", "40")),
    "database": "none",  # no example database: each run is the same run
}

schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    app,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20260301,
            "generation": GENERATION,
            # The token's own user, so requests get past the 403 and reach the handlers.
            "parameters": {"user_id": str(FUZZ_USER_ID)},
        }
    ),
)
# The task routes again, with user_id generated too (any id, valid or not), for a
# Better Auth caller: the path parameter's own schema is fuzzed as well.
any_user_id_schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    app,
    config=schemathesis.Config.from_dict({"seed": 20260302, "generation": GENERATION}),
).include(path_regex=r"^/api/\{user_id\}/")


@pytest.fixture
def fuzz_account(new_account):
    account = new_account("fuzz@example.com")
    assert account.id == FUZZ_USER_ID
    return account


@schema.parametrize()
# One account per operation, shared by its examples on purpose: it is what the token names.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_matches_its_schema(case, fuzz_account):
    case.call_and_validate(headers=fuzz_account.headers, checks=CHECKS)


@pytest.fixture
def better_auth_caller(client, monkeypatch) -> dict[str, str]:
    """A caller with a shared-secret Better Auth token."""
    secret = secrets.token_urlsafe(48)
    monkeypatch.setattr(better_auth, "verifier", better_auth.BetterAuth(None, None, secret))
    claims = {"sub": "fuzz-user", "exp": datetime.now(UTC) + timedelta(hours=1)}
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


@any_user_id_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_task_routes_match_their_schema_for_any_user_id(case, better_auth_caller):
    case.call_and_validate(headers=better_auth_caller, checks=CHECKS)
