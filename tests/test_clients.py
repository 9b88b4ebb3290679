"""A frontend's TypeScript against the real thing: a typed client, generated from a real
server's /openapi.json, does a frontend's whole round trip against that server
(tests/e2e/typed-client/check.ts), the requests on the whole list included (mark all, clear
completed, counts, a move), and every TypeScript block of README.md compiles against the
pinned libraries it uses (Better Auth's client, the generated SDK).

The two generators a frontend developer would use read the live schema: openapi-typescript
(types) and @hey-api/openapi-ts (an SDK whose functions are named by the operationIds). The
program is compiled with tsc --strict and run with node; every status and body it meets is
typed, so a schema that lies about the server fails to compile or fails the run.
"""

import json
import os
import re
import shutil
import subprocess

import pytest
from helpers import REPO_ROOT, TEST_DATABASE_URL, require_tool

CLIENT_DIR = REPO_ROOT / "tests" / "e2e" / "typed-client"
BIN = CLIENT_DIR / "node_modules" / ".bin"
README = REPO_ROOT / "README.md"
TYPESCRIPT_BLOCK = re.compile(r"^```(?:ts|typescript)\n(.*?)^```", re.M | re.S)
# The sections whose TypeScript a frontend developer pastes: each must keep a block to check.
SECTIONS_WITH_TYPESCRIPT = [
    "## Using it from a Next.js app with Better Auth",
    "## Generating a typed client",
]
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
    "ok: completeTasks with no filter completes all 5",
    "ok: completeTasks with tag=home reopens those 3",
    "ok: countTasks in Europe/Paris: 5 in all, 3 pending, 2 completed, 1 overdue, 0 due today",
    "ok: countTasks with an unknown time zone is 422 naming query.tz",
    "ok: deleteTasks with neither a filter nor all=true is 422",
    "ok: deleteTasks with status=completed clears the 2 completed",
    "ok: listTasks with sort=position lists the rest in the order they were made",
    "ok: moveTask with an ETag from before the bulk changes is 412 with the current ETag",
    "ok: moveTask before another task, with the ETag just read, answers it with a new ETag",
    "ok: listTasks with sort=position shows the new order",
    "typed client: 30 checks passed",
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


def installed_as_pinned() -> bool:
    """Each package that package.json pins is in node_modules, at that version."""
    pinned = json.loads((CLIENT_DIR / "package.json").read_text())["devDependencies"]
    for name, version in pinned.items():
        manifest = CLIENT_DIR / "node_modules" / name / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


@pytest.fixture(scope="module")
def node_packages() -> None:
    """The pinned packages of tests/e2e/typed-client, installed from its lock file if missing
    or not as pinned (an install from before a package was added)."""
    require_tool(
        shutil.which("node") is not None and shutil.which("npm") is not None,
        "needs Node.js 18+ and npm (Debian: apt-get install nodejs npm)",
    )
    if not installed_as_pinned():
        run(["npm", "ci", "--no-audit", "--no-fund"], timeout=NPM_TIMEOUT_SECONDS)


def test_a_generated_typescript_client_compiles_strictly_and_runs_against_the_server(
    node_packages, live_server, new_database, tmp_path
):
    # A project folder of its own: the SQLite and PostgreSQL suites may run this test at once.
    for name in ("check.ts", "tsconfig.json", "package.json"):
        shutil.copy(CLIENT_DIR / name, tmp_path)
    (tmp_path / "node_modules").symlink_to(CLIENT_DIR / "node_modules")
    # On the PostgreSQL suite, a database there: the requests on many tasks differ by dialect.
    on_postgresql = TEST_DATABASE_URL is not None
    server = live_server(env={"DATABASE_URL": new_database("typed")} if on_postgresql else {})
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


def test_every_typescript_block_of_the_readme_compiles_strictly(node_packages, client, tmp_path):
    """Each block in a file of its own, in a project set up as a new Next.js app (readme/):
    below an import of what a signed-in page has at hand (readme/page.ts: Better Auth's
    client with jwtClient(), and its session), beside the SDK that README's command
    generates into src/client."""
    readme = README.read_text(encoding="utf-8")
    for heading in SECTIONS_WITH_TYPESCRIPT:
        section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
        assert TYPESCRIPT_BLOCK.search(section), f"{heading} has no ```ts block"
    blocks = TYPESCRIPT_BLOCK.findall(readme)
    (tmp_path / "node_modules").symlink_to(CLIENT_DIR / "node_modules")
    shutil.copy(CLIENT_DIR / "readme" / "tsconfig.json", tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(CLIENT_DIR / "readme" / "page.ts", source)
    response = client.get("/openapi.json")
    assert response.status_code == 200
    (tmp_path / "openapi.json").write_text(json.dumps(response.json()))
    run([str(BIN / "openapi-ts"), "-i", "openapi.json", "-o", "src/client"], tmp_path)
    for number, block in enumerate(blocks, start=1):
        page = 'import { authClient, session } from "./page";\n' + block
        (source / f"readme-{number}.ts").write_text(page)
    compiled = subprocess.run(
        [str(BIN / "tsc"), "--project", "tsconfig.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_SECONDS,
    )
    # src/readme-N.ts is README's Nth block, one line down (the import above it).
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    assert compiled.stdout == ""
