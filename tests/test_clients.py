"""A typed TypeScript client, generated from a real server's /openapi.json, does a
frontend's whole round trip against that server (tests/e2e/typed-client/check.ts).

The two generators a frontend developer would use read the live schema: openapi-typescript
(types) and @hey-api/openapi-ts (an SDK whose functions are named by the operationIds). The
program is compiled with tsc --strict and run with node; every status and body it meets is
typed, so a schema that lies about the server fails to compile or fails the run.
"""

import os
import shutil
import subprocess

import pytest
from helpers import REPO_ROOT, require_tool

CLIENT_DIR = REPO_ROOT / "tests" / "e2e" / "typed-client"
BIN = CLIENT_DIR / "node_modules" / ".bin"
NPM_TIMEOUT_SECONDS = 300
STEP_TIMEOUT_SECONDS = 120
# What check.ts prints, one line per check, when the server does what the schema says.
EXPECTED_OUTPUT = [
    "ok: GET /health answers ok",
    "ok: signup returns 201 and the user",
    "ok: getMe returns the signed-up user",
    "ok: createTask retried with its Idempotency-Key makes no second task",
    "ok: createTask's ETag is the new task's version",
    "ok: getTask with If-None-Match of the current ETag is 304",
    "ok: patchTask with a stale If-Match is 412 with the current ETag",
    "ok: createTask returns 201",
    "ok: createTask's Location header names the new task",
    "ok: tags come back lower-cased and sorted",
    "ok: the due date round-trips",
    "ok: listTasks with filters: X-Total-Count is 1",
    "ok: listTasks with filters returns the tagged task",
    "ok: updateTask (PUT) changes only the title",
    "ok: patchTask (PATCH) changes the priority",
    "ok: completeTask marks it completed",
    "ok: getTask of a missing task is 404 with a typed string detail",
    "ok: createTask with an empty title is 422 naming body.title",
    "ok: deleteTask returns 204",
    "ok: the deleted task is 404",
    "typed client: 20 checks passed",
]


def run(
    command: list[str], cwd=CLIENT_DIR, timeout: int = STEP_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def node_packages() -> None:
    """The pinned packages of tests/e2e/typed-client, installed from its lock file if missing."""
    require_tool(
        shutil.which("node") is not None and shutil.which("npm") is not None,
        "needs Node.js 18+ and npm (Debian: apt-get install nodejs npm)",
    )
    if not (BIN / "tsc").exists():
        run(["npm", "ci", "--no-audit", "--no-fund"], timeout=NPM_TIMEOUT_SECONDS)


def test_a_generated_typescript_client_compiles_strictly_and_runs_against_the_server(
    node_packages, live_server, tmp_path
):
    # A project folder of its own: the SQLite and PostgreSQL suites may run this test at once.
    for name in ("check.ts", "tsconfig.json", "package.json"):
        shutil.copy(CLIENT_DIR / name, tmp_path)
    (tmp_path / "node_modules").symlink_to(CLIENT_DIR / "node_modules")
    server = live_server()
    schema_url = f"{server.url}/openapi.json"
    # The README's two commands, into generated/.
    run([str(BIN / "openapi-typescript"), schema_url, "-o", "generated/schema.d.ts"], tmp_path)
    run([str(BIN / "openapi-ts"), "-i", schema_url, "-o", "generated/sdk"], tmp_path)
    run([str(BIN / "tsc"), "--project", "tsconfig.json"], tmp_path)
    program = subprocess.run(
        ["node", "build/check.js", server.url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_SECONDS,
    )
    assert program.returncode == 0, program.stdout + program.stderr
    assert program.stdout.splitlines() == EXPECTED_OUTPUT
    assert program.stderr == ""
