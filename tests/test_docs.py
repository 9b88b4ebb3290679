"""The docs must tell the truth: API.md and README.md against the app and the tree, and
every example in /docs must work.

API.md names each endpoint in exactly one way, a heading inside its "API Endpoints"
section such as "#### `GET /api/{user_id}/tasks`"; these tests parse those headings and
compare them with the paths and methods that the running app publishes. Its "Project
Structure" table must name every file of the tree, README's endpoint table every route,
its dependency list every requirement, and each test it cites must exist. Examples are
checked twice: against the model class that the schema component names, and by sending
each request example to the API, which must answer with the documented success status.
"""

import ast
import re
import subprocess
from pathlib import Path

import pytest
from fastapi import FastAPI

import routes.responses
import schemas
from main import app, operation_id

REPO_ROOT = Path(__file__).resolve().parent.parent
API_MD = REPO_ROOT / "API.md"
README = REPO_ROOT / "README.md"
SECTIONS = [
    "API Overview",
    "Project Structure",
    "Core Dependencies",
    "Authentication & Authorization",
    "Pydantic & SQLModel Models",
    "API Endpoints",
    "Error Handling Strategy",
    "Key Asynchronous Operations",
]
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")
ENDPOINT_HEADING = re.compile(r"^#{3,4} `(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (/\S*)`$")
# A heading that mentions a method and a path but not in the form above: it would slip
# past the comparison, so it is an error of its own.
LOOSE_ENDPOINT_HEADING = re.compile(r"^#+ .*\b(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\b\W*/")
SIGNUP_PATH = "/api/auth/signup"

# Collected once from the app, so that every operation with a body gets its own test.
BODY_OPERATIONS = [
    (method.upper(), path)
    for path, operations in app.openapi()["paths"].items()
    for method, operation in operations.items()
    if "requestBody" in operation
]


def fetch_openapi(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


def schema_operations(openapi: dict) -> dict[tuple[str, str], dict]:
    return {
        (method.upper(), path): operation
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        if method in HTTP_METHODS
    }


def markdown_sections(document: Path) -> dict[str, str]:
    """Each "## " section of a Markdown file by its heading, in document order."""
    sections: dict[str, str] = {}
    current = None
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def api_md_sections() -> dict[str, str]:
    return markdown_sections(API_MD)


def first_column_names(table: str) -> list[str]:
    """Every `name` in the first cell of each row of the Markdown tables in `table`."""
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| ")]
    return [name for cell in rows for name in re.findall(r"`([^`]+)`", cell)]


def documented_endpoints() -> dict[tuple[str, str], str]:
    """Each endpoint heading of the API Endpoints section, with the text under it."""
    endpoints: dict[tuple[str, str], str] = {}
    current = None
    for line in api_md_sections()["API Endpoints"].splitlines():
        match = ENDPOINT_HEADING.match(line)
        if match:
            current = (match[1], match[2])
            assert current not in endpoints, f"{current} is documented twice"
            endpoints[current] = ""
        elif line.startswith("#"):
            assert not LOOSE_ENDPOINT_HEADING.match(line), (
                f"write it as #### `METHOD /path`: {line}"
            )
            current = None
        elif current is not None:
            endpoints[current] += line + "\n"
    return endpoints


def component(openapi: dict, schema: dict) -> tuple[str | None, dict]:
    """The named component behind a $ref (also inside anyOf [model, null]), else the schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return name, openapi["components"]["schemas"][name]
    for option in schema.get("anyOf", []):
        if "$ref" in option:
            return component(openapi, option)
    return None, schema


def first_example(openapi: dict, media: dict) -> object | None:
    """The example that Swagger UI shows for a media type: its own, else its model's."""
    if "example" in media:
        return media["example"]
    if media.get("examples"):
        return next(iter(media["examples"].values()))["value"]
    schema = media.get("schema", {})
    if schema.get("type") == "array":
        _, items = component(openapi, schema["items"])
        return [items["examples"][0]] if items.get("examples") else None
    _, model = component(openapi, schema)
    return model["examples"][0] if model.get("examples") else None


def model_class(name: str):
    model = getattr(schemas, name, None) or getattr(routes.responses, name, None)
    assert model is not None, (
        f"schema component {name} is not a model of schemas.py or responses.py"
    )
    return model


def body_example(openapi: dict, method: str, path: str) -> object | None:
    media = schema_operations(openapi)[(method, path)]["requestBody"]["content"]["application/json"]
    return first_example(openapi, media)


def success_status(operation: dict) -> str:
    statuses = [code for code in operation["responses"] if code.startswith("2")]
    assert len(statuses) == 1, f"expected one success status, found {statuses}"
    return statuses[0]


# --- API.md against /openapi.json ---


def test_api_md_has_the_eight_sections_in_order():
    assert list(api_md_sections()) == SECTIONS


def test_every_endpoint_in_the_schema_is_documented(client):
    missing = set(schema_operations(fetch_openapi(client))) - set(documented_endpoints())
    assert not missing, f"API.md does not document {sorted(missing)}"


def test_api_md_documents_no_endpoint_that_the_schema_lacks(client):
    extra = set(documented_endpoints()) - set(schema_operations(fetch_openapi(client)))
    assert not extra, f"API.md documents endpoints the app does not have: {sorted(extra)}"


def test_every_documented_endpoint_has_a_curl_example():
    for (method, path), text in documented_endpoints().items():
        curl = [line for line in text.splitlines() if line.lstrip().startswith("curl ")]
        assert curl, f"{method} {path} has no curl example"
        if method != "GET":
            assert f"-X {method}" in text, f"the curl example of {method} {path} lacks -X {method}"


def test_every_documented_status_is_named_under_its_endpoint(client):
    documented = documented_endpoints()
    for key, operation in schema_operations(fetch_openapi(client)).items():
        for status in operation["responses"]:
            assert re.search(rf"\b{status}\b", documented[key]), f"{key} does not mention {status}"


# --- the docs against the tree: files, requirements, cited tests, links ---

README_ENDPOINT_ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/\S*)` \|", re.M)
CITED_TEST = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")
RELATIVE_LINK = re.compile(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]*))?\)")
DOCS = [README, API_MD, REPO_ROOT / "bench" / "README.md"]


def layout_names() -> list[str]:
    return first_column_names(api_md_sections()["Project Structure"])


def requirement_names() -> list[str]:
    """The distribution name of each requirement (`PyJWT[crypto]==2.15.1` is PyJWT), of both
    files; requirements-dev.txt's `-r requirements.txt` names none."""
    text = "".join(
        (REPO_ROOT / name).read_text() for name in ("requirements.txt", "requirements-dev.txt")
    )
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [
        re.match(r"[A-Za-z0-9._-]+", line)[0]
        for line in lines
        if line and not line.startswith("-r")
    ]


def headings(document: Path) -> list[str]:
    """The Markdown headings of a file, leaving out the comment lines of its code blocks."""
    found, in_code = [], False
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            found.append(line.lstrip("#").strip())
    return found


def defined_functions(path: Path) -> set[str]:
    if not path.exists():
        return set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_file_in_the_layout_table_exists():
    missing = [name for name in layout_names() if not (REPO_ROOT / name).exists()]
    assert not missing, f"API.md's layout table names files that do not exist: {missing}"


def test_every_python_file_at_the_root_and_in_routes_is_in_the_layout_table():
    named = set(layout_names())
    files = [*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("routes/*.py")]
    unnamed = sorted({path.relative_to(REPO_ROOT).as_posix() for path in files} - named)
    assert not unnamed, f"API.md's layout table does not name {unnamed}"


def test_readme_names_every_requirement_in_its_dependency_list():
    listed = re.findall(r"`([A-Za-z0-9._-]+)", markdown_sections(README)["Dependencies"])
    missing = [name for name in requirement_names() if name not in listed]
    assert not missing, f"README's Dependencies does not name {missing}"


def test_every_test_that_readme_cites_exists():
    cited = CITED_TEST.findall(README.read_text(encoding="utf-8"))
    assert cited, "README cites no test"
    missing = [
        f"{file}::{name}" for file, name in cited if name not in defined_functions(REPO_ROOT / file)
    ]
    assert not missing, f"README cites tests that do not exist: {missing}"


def test_readme_endpoint_table_lists_every_operation_once(client):
    listed = sorted(README_ENDPOINT_ROW.findall(markdown_sections(README)["Endpoints"]))
    published = sorted(schema_operations(fetch_openapi(client)))
    assert listed == published, (
        f"README's endpoint table differs in {sorted(set(listed) ^ set(published))}"
    )


def test_links_between_the_docs_reach_a_file_and_a_heading_that_exist():
    broken = []
    for document in DOCS:
        for target, anchor in RELATIVE_LINK.findall(document.read_text(encoding="utf-8")):
            path = (document.parent / target).resolve() if target else document
            if not path.exists():
                broken.append(f"{document.name}: {target}")
            elif anchor and anchor not in {github_anchor(heading) for heading in headings(path)}:
                broken.append(f"{document.name}: {target}#{anchor}")
    assert not broken, f"links to nothing: {broken}"


def test_the_readme_curl_walkthrough_works_when_pasted_into_a_shell(tmp_path, live_server):
    walkthrough = re.search(
        r"## Try it with curl.*?```bash\n(.*?)```", README.read_text(), re.S
    ).group(1)
    script = walkthrough.replace("http://127.0.0.1:8000", live_server().url)
    shell = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0, shell.stderr
    statuses = re.findall(r"^HTTP/1.1 (\d{3})", shell.stdout, re.M)
    assert statuses == ["201", "201", "200", "204"]  # the create, retried with its key
    assert '"completed":true' in shell.stdout
    assert "x-total-count: 1" in shell.stdout
    # The walkthrough cleans up; its last requests used the access token from the refresh.
    assert not (tmp_path / "signup.json").exists() and not (tmp_path / "refresh.json").exists()


# --- operationIds: what generated clients name their functions ---

# (method, path): (operationId, tag). A new route gets its id from its function's name by
# the same rule (main.operation_id), and belongs in this table.
OPERATIONS = {
    ("POST", "/api/auth/signup"): ("signup", "auth"),
    ("POST", "/api/auth/login"): ("login", "auth"),
    ("POST", "/api/auth/token"): ("loginForm", "auth"),
    ("GET", "/api/auth/me"): ("getMe", "auth"),
    ("DELETE", "/api/auth/me"): ("deleteMe", "auth"),
    ("POST", "/api/auth/logout"): ("logout", "auth"),
    ("PUT", "/api/auth/password"): ("changePassword", "auth"),
    ("POST", "/api/auth/refresh"): ("refresh", "auth"),
    ("GET", "/api/{user_id}/tasks"): ("listTasks", "tasks"),
    ("POST", "/api/{user_id}/tasks"): ("createTask", "tasks"),
    ("PATCH", "/api/{user_id}/tasks"): ("completeTasks", "tasks"),
    ("DELETE", "/api/{user_id}/tasks"): ("deleteTasks", "tasks"),
    ("GET", "/api/{user_id}/tasks/counts"): ("countTasks", "tasks"),
    ("GET", "/api/{user_id}/tasks/{task_id}"): ("getTask", "tasks"),
    ("PUT", "/api/{user_id}/tasks/{task_id}"): ("updateTask", "tasks"),
    ("PATCH", "/api/{user_id}/tasks/{task_id}"): ("patchTask", "tasks"),
    ("DELETE", "/api/{user_id}/tasks/{task_id}"): ("deleteTask", "tasks"),
    ("PATCH", "/api/{user_id}/tasks/{task_id}/complete"): ("completeTask", "tasks"),
    ("PUT", "/api/{user_id}/tasks/{task_id}/position"): ("moveTask", "tasks"),
    ("GET", "/health"): ("health", "health"),
}
# A generated SDK function is named after its operationId; longer names are a sign that
# the path or the method leaked into it.
MAX_OPERATION_ID_LENGTH = 24


def test_each_operation_has_the_operation_id_a_person_would_write_and_its_tag(client):
    published = {
        key: (operation["operationId"], *operation["tags"])
        for key, operation in schema_operations(fetch_openapi(client)).items()
    }
    assert published == OPERATIONS


def test_operation_ids_are_unique_short_camel_case_words(client):
    ids = [
        operation["operationId"] for operation in schema_operations(fetch_openapi(client)).values()
    ]
    assert len(ids) == len(set(ids)), sorted(ids)
    for each_id in ids:
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", each_id), each_id
        assert len(each_id) <= MAX_OPERATION_ID_LENGTH, each_id


def test_a_new_route_gets_its_operation_id_from_its_function_name():
    probe = FastAPI(generate_unique_id_function=operation_id)

    @probe.post("/api/auth/refresh")
    def refresh_access_token() -> None: ...

    assert (
        probe.openapi()["paths"]["/api/auth/refresh"]["post"]["operationId"] == "refreshAccessToken"
    )


# --- examples in /openapi.json ---


def test_every_request_body_has_an_example_that_its_model_accepts(client):
    openapi = fetch_openapi(client)
    assert BODY_OPERATIONS, "no operation takes a body"
    for (method, path), operation in schema_operations(openapi).items():
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            example = first_example(openapi, media)
            assert isinstance(example, dict), f"{method} {path} ({media_type}) has no example"
            name, _ = component(openapi, media["schema"])
            if name.startswith("Body_"):
                # FastAPI's generated form model has no class of ours: the API test below
                # sends this example instead.
                assert media_type == "application/x-www-form-urlencoded", name
                continue
            model_class(name).model_validate(example)


def test_every_success_response_has_an_example_that_its_model_accepts(client):
    openapi = fetch_openapi(client)
    for (method, path), operation in schema_operations(openapi).items():
        response = operation["responses"][success_status(operation)]
        for media in response.get("content", {}).values():
            example = first_example(openapi, media)
            assert example is not None, f"{method} {path}: the success response has no example"
            schema = media["schema"]
            if schema.get("type") == "array":
                name, _ = component(openapi, schema["items"])
                assert isinstance(example, list) and example, f"{method} {path}"
                for item in example:
                    model_class(name).model_validate(item)
            else:
                name, _ = component(openapi, schema)
                model_class(name).model_validate(example)


def test_every_error_response_shows_an_example_detail(client):
    openapi = fetch_openapi(client)
    for (method, path), operation in schema_operations(openapi).items():
        for status, response in operation["responses"].items():
            if status.startswith("2") or status == "304":  # 304 Not Modified has no body
                continue
            media = response.get("content", {}).get("application/json")
            assert media, f"{method} {path} {status} has no JSON body"
            example = first_example(openapi, media)
            assert isinstance(example, dict) and example.get("detail"), f"{method} {path} {status}"


@pytest.mark.parametrize(
    "method,path", BODY_OPERATIONS, ids=[f"{method} {path}" for method, path in BODY_OPERATIONS]
)
def test_each_request_example_is_accepted_by_the_api(client, method, path):
    """Sent as "Try it out" would send it, by the user of the signup example, to that
    user's own path and task, with that user's refresh token pasted in place of the
    example's: the answer must be the documented success status."""
    openapi = fetch_openapi(client)
    operation = schema_operations(openapi)[(method, path)]
    headers, path_values, own_values = {}, {}, {}
    if path != SIGNUP_PATH:
        response = client.post(SIGNUP_PATH, json=body_example(openapi, "POST", SIGNUP_PATH))
        assert response.status_code == 201, response.text
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        path_values["user_id"] = response.json()["user"]["id"]
        own_values["refresh_token"] = response.json()["refresh_token"]
    if "{task_id}" in path:
        task = body_example(openapi, "POST", "/api/{user_id}/tasks")
        response = client.post(f"/api/{path_values['user_id']}/tasks", json=task, headers=headers)
        assert response.status_code == 201, response.text
        path_values["task_id"] = response.json()["id"]

    ((media_type, media),) = operation["requestBody"]["content"].items()
    example = first_example(openapi, media)
    example = {name: own_values.get(name, value) for name, value in example.items()}
    is_form = media_type == "application/x-www-form-urlencoded"
    body = {"data": example} if is_form else {"json": example}
    response = client.request(method, path.format(**path_values), headers=headers, **body)

    status = success_status(operation)
    assert response.status_code == int(status), response.text
    for success_media in operation["responses"][status].get("content", {}).values():
        name, _ = component(openapi, success_media["schema"])
        model_class(name).model_validate(response.json())
