"""The performance benchmark: `python bench/run.py` (about three minutes), or
`python bench/run.py --smoke` (a few seconds, for CI: it checks that the benchmark still
runs and that no request fails, and enforces no speed target).

It starts the real server (`uvicorn main:app`, one worker) on a fresh SQLite file in a
temporary directory, pinned to CPU 0, and the framework ceiling (bench/ceiling.py) with
the same settings. wrk drives both from CPU 1. Every figure is the median of alternating
rounds, and every ratio is taken round by round, because shared machines are noisy.
The table is printed and the figures are written to bench/results.json.

`python bench/run.py --postgres` (about two minutes) instead measures list and create on
PostgreSQL with `--workers 1` and `--workers 2`, on a throwaway server (.ci/postgres) or on
$BENCH_DATABASE_URL, and writes bench/results-postgres.json. Nothing is pinned there: the
question is what a second worker buys when everything shares the machine's cores.
"""

import argparse
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

BENCH_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCH_DIR.parent
RESULTS_FILE = BENCH_DIR / "results.json"
POSTGRES_RESULTS_FILE = BENCH_DIR / "results-postgres.json"
COMPARE_RESULTS_FILE = BENCH_DIR / "results-compare.json"
SERVER_CPU = "0"
LOAD_CPU = "1"
CONNECTIONS = 16
BURST_CONNECTIONS = 4  # list clients, and as many clients logging in back to back
PASSWORD = secrets.token_urlsafe(16)
load_generator_cpu: list[float] = []  # wrk's share of its CPU, run by run
# On PostgreSQL, each wrk connection closes after this many requests (wrk_report.lua says why).
RECONNECT_EVERY = 20
NEW_TASK = {"title": "Buy milk", "description": "Two litres, semi-skimmed", "tags": ["shopping"]}


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int  # per wrk run
    other_users: int
    other_users_tasks: int
    second_user_tasks: int


FULL = Plan(
    rounds=3, seconds=5, other_users=100, other_users_tasks=100_000, second_user_tasks=10_000
)
SMOKE = Plan(rounds=1, seconds=1, other_users=10, other_users_tasks=1_000, second_user_tasks=100)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(method: str, url: str, body: dict | None = None, token: str | None = None):
    """One HTTP request; returns (status, headers, decoded JSON body or None)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        content = response.read()
        return response.status, response.headers, json.loads(content) if content else None


def process_tree(root: int) -> list[int]:
    """The process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User and system time of a process and of its children that it has waited for, so
    summed over a process tree it also counts the members that have exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    return sum(cpu_seconds(pid) for pid in process_tree(root))


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent on anything but idling, from /proc/stat."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


class Server:
    """A uvicorn process, pinned to CPU 0 unless told otherwise, with its workers if it has
    any; its log goes to a file in the run's directory."""

    def __init__(
        self,
        app: str,
        environment: dict,
        log_path: Path,
        cpus: str | None = SERVER_CPU,
        workers: int = 1,
        code: Path = REPOSITORY,
        options: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        if workers > 1:
            command += ["--workers", str(workers)]
        command += options
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        with open(log_path, "wb") as log:
            # taskset execs uvicorn, so this pid is the server's own.
            self.process = subprocess.Popen(
                command, cwd=code, env=environment, stdout=log, stderr=subprocess.STDOUT
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_until_serving(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.log_path.name} stopped:\n{self.log_path.read_text()}")
            try:
                call("GET", self.url(path))
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{self.log_path.name} did not start:\n{self.log_path.read_text()}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)  # with --workers, the workers' too

    def worker_cpu_seconds(self) -> dict[int, float]:
        """With --workers: each worker process's CPU time (not multiprocessing's helpers)."""
        return {
            pid: cpu_seconds(pid)
            for pid in process_tree(self.process.pid)[1:]
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        }

    def wait_until_idle(self) -> None:
        """Let queued work (such as logins that wrk gave up on) finish before the next run."""
        for _ in range(100):
            before = self.cpu_seconds()
            time.sleep(0.2)
            if self.cpu_seconds() - before < 0.01:
                return

    def peak_memory_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def wrk_command(
    url: str, seconds: int, connections: int, timeout_s: int, cpus: str | None = LOAD_CPU
) -> list[str]:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(BENCH_DIR / "wrk_report.lua"),
        url,
    ]
    return ["taskset", "-c", cpus, *command] if cpus else command


def wrk_environment(
    method: str, token: str | None, body: dict | None, reconnect_every: int | None = None
) -> dict:
    environment = {**os.environ, "BENCH_METHOD": method}
    if reconnect_every:
        environment["BENCH_RECONNECT_EVERY"] = str(reconnect_every)
    if token:
        environment["BENCH_AUTHORIZATION"] = f"Bearer {token}"
    if body is not None:
        environment["BENCH_BODY"] = json.dumps(body)
    return environment


def wrk_summary(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["p50_ms"] = stats["p50_us"] / 1000
    stats["p99_ms"] = stats["p99_us"] / 1000
    stats["errors"] = stats["status_errors"] + stats["socket_errors"] + stats["timeouts"]
    return stats


def load(
    url: str,
    seconds: int,
    connections: int = CONNECTIONS,
    method: str = "GET",
    token: str | None = None,
    body: dict | None = None,
    server: Server | None = None,
    load_cpus: str | None = LOAD_CPU,
    reconnect_every: int | None = None,
) -> dict:
    """Run wrk to completion. Also records how busy wrk itself was, to show it is not
    the bottleneck, and with `server`, the server's CPU time per request: a figure that
    other programs on a shared machine disturb far less than requests per second."""
    server_cpu = server.cpu_seconds() if server else 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = subprocess.run(
        wrk_command(url, seconds, connections, timeout_s=10, cpus=load_cpus),
        env=wrk_environment(method, token, body, reconnect_every),
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = wrk_summary(finished.stdout)
    busy = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats["load_generator_cpu"] = busy / (stats["duration_us"] / 1e6)
    load_generator_cpu.append(stats["load_generator_cpu"])
    if server:
        stats["cpu_ms"] = (server.cpu_seconds() - server_cpu) * 1000 / max(1, stats["requests"])
    return stats


def start_background_load(
    url: str, seconds: int, connections: int, method: str, body: dict
) -> subprocess.Popen:
    return subprocess.Popen(
        wrk_command(url, seconds, connections, timeout_s=60),
        env=wrk_environment(method, None, body),
        stdout=subprocess.PIPE,
        text=True,
    )


def sign_up(server: Server, email: str) -> tuple[int, str]:
    status, _, body = call(
        "POST", server.url("/api/auth/signup"), {"email": email, "password": PASSWORD}
    )
    assert status == 201, status
    return body["user"]["id"], body["access_token"]


def add_tasks_over_http(server: Server, user_id: int, token: str, count: int) -> None:
    for number in range(count):
        task = {
            "title": f"Task {number}",
            "description": f"The description of task {number}",
            "tags": ["bench"],
        }
        status, _, _ = call("POST", server.url(f"/api/{user_id}/tasks"), task, token)
        assert status == 201, status


def bulk_load(database_url: str, second_user_id: int, plan: Plan) -> None:
    """Insert the other users and their tasks, and the second user's tasks, straight into
    the database: a few seconds instead of 110,000 requests."""
    sys.path.insert(0, str(REPOSITORY))  # models.py lives at the repository root
    from sqlalchemy import create_engine, insert, select

    from models import Task, TaskTag, User

    engine = create_engine(database_url)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        # "!" is no bcrypt hash, so these accounts cannot log in; they only own tasks.
        first_other_id = connection.scalar(select(User.id).order_by(User.id.desc())) + 1
        connection.execute(
            insert(User),
            [
                {
                    "id": first_other_id + number,
                    "email": f"other{number}@bench.example",
                    "password_hash": "!",
                    "created_at": start,
                }
                for number in range(plan.other_users)
            ],
        )
        owners = [
            first_other_id + number % plan.other_users for number in range(plan.other_users_tasks)
        ]
        owners += [second_user_id] * plan.second_user_tasks
        first_task_id = connection.scalar(select(Task.id).order_by(Task.id.desc())) + 1
        task_rows, tag_rows = [], []
        for offset, owner in enumerate(owners):
            moment = start + timedelta(seconds=offset)
            task_rows.append(
                {
                    "id": first_task_id + offset,
                    "user_id": owner,
                    "title": f"Task {offset}",
                    "description": f"The description of task {offset}",
                    "completed": offset % 3 == 0,
                    "priority": "medium",
                    "recurrence": "none",
                    "next_occurrence_created": False,
                    "created_at": moment,
                    "updated_at": moment,
                    "position": first_task_id + offset,  # any distinct places will do here
                }
            )
            tag_rows.append({"task_id": first_task_id + offset, "name": f"tag{offset % 50}"})
        connection.execute(insert(Task), task_rows)
        connection.execute(insert(TaskTag), tag_rows)
    engine.dispose()


def check(condition: bool, message: str, failures: list[str]) -> None:
    if not condition:
        failures.append(message)
        print(f"FAILED: {message}", flush=True)


def server_environment(workdir: Path) -> dict:
    return {
        **{key: value for key, value in os.environ.items() if key != "BCRYPT_ROUNDS"},
        "JWT_SECRET": secrets.token_urlsafe(48),  # fresh for every run, never a constant
        "JWT_SECRET_FILE": str(workdir / "unused_jwt_secret"),
        "LOGIN_FAILURE_LIMIT": "0",  # rate limits off: the burst must measure bcrypt, not 429s
        "AUTH_REQUESTS_PER_MINUTE": "0",
        "MAX_TASKS_PER_USER": "100000000",  # the create runs must never meet the task limit
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run(plan: Plan, workdir: Path) -> tuple[dict, list[str]]:
    failures: list[str] = []
    environment = server_environment(workdir)
    main_url = f"sqlite:///{workdir / 'main.db'}"
    scale_url = f"sqlite:///{workdir / 'scale.db'}"
    project = Server("main:app", {**environment, "DATABASE_URL": main_url}, workdir / "project.log")
    scale = Server("main:app", {**environment, "DATABASE_URL": scale_url}, workdir / "scale.log")
    ceiling = Server("bench.ceiling:app", environment, workdir / "ceiling.log")
    servers = [project, scale, ceiling]
    try:
        project.wait_until_serving("/health")
        scale.wait_until_serving("/health")
        ceiling.wait_until_serving("/tasks")

        print("setting up users and tasks...", flush=True)
        list_user, list_token = sign_up(project, "list@bench.example")
        add_tasks_over_http(project, list_user, list_token, 20)
        create_user, create_token = sign_up(project, "create@bench.example")
        scale_user, scale_token = sign_up(scale, "first@bench.example")
        add_tasks_over_http(scale, scale_user, scale_token, 20)
        second_user, second_token = sign_up(scale, "second@bench.example")
        bulk_load(scale_url, second_user, plan)
        list_url = project.url(f"/api/{list_user}/tasks")
        ceiling_url = ceiling.url("/tasks")
        _, headers, body = call("GET", list_url, token=list_token)
        check(
            len(body) == 20 and body[0]["tags"] == ["bench"],
            "the list returns 20 tagged tasks",
            failures,
        )
        for url, token in [(list_url, list_token), (ceiling_url, None)]:
            load(url, 1, token=token)  # warm-up: imports, connections, caches
        rounds = range(plan.rounds)
        figures: dict = {}

        print("list...", flush=True)
        runs = [
            (
                load(list_url, plan.seconds, token=list_token, server=project),
                load(ceiling_url, plan.seconds, server=ceiling),
            )
            for _ in rounds
        ]
        figures["list"] = summarise(runs, "rps", "rps")
        # The ceiling's CPU time per request over ours: the same ratio, less noisy.
        figures["list_cpu_ms"] = {
            "project": median([project_run["cpu_ms"] for project_run, _ in runs]),
            "ceiling": median([ceiling_run["cpu_ms"] for _, ceiling_run in runs]),
            "ratio": median(
                [ceiling_run["cpu_ms"] / project_run["cpu_ms"] for project_run, ceiling_run in runs]
            ),
        }
        for project_run, ceiling_run in runs:
            check(project_run["errors"] == ceiling_run["errors"] == 0, "list: no errors", failures)

        print("scale...", flush=True)
        first_url = scale.url(f"/api/{scale_user}/tasks")
        second_url = scale.url(f"/api/{second_user}/tasks")
        _, headers, body = call("GET", second_url, token=second_token)
        check(
            len(body) == 50 and headers["X-Total-Count"] == str(plan.second_user_tasks),
            "the second user's default page is 50 tasks of all of them",
            failures,
        )
        load(first_url, 1, token=scale_token)
        runs = [
            (
                load(list_url, plan.seconds, token=list_token),
                load(first_url, plan.seconds, token=scale_token),
                load(second_url, plan.seconds, token=second_token),
            )
            for _ in rounds
        ]
        figures["scale_first_user"] = summarise(
            [(first, empty) for empty, first, _ in runs], "p50_ms", "p50_ms"
        )
        figures["scale_second_user"] = summarise(
            [(second, empty) for empty, _, second in runs], "p50_ms", "p50_ms"
        )
        for trio in runs:
            check(all(run["errors"] == 0 for run in trio), "scale: no errors", failures)

        print("login burst...", flush=True)
        login_body = {"email": "list@bench.example", "password": PASSWORD}
        runs, logins = [], []
        for _ in rounds:
            quiet = load(list_url, plan.seconds, BURST_CONNECTIONS, token=list_token)
            burst = start_background_load(
                project.url("/api/auth/login"),
                plan.seconds + 2,
                BURST_CONNECTIONS,
                "POST",
                login_body,
            )
            time.sleep(1)  # the logins are under way before the list is measured
            busy = load(list_url, plan.seconds, BURST_CONNECTIONS, token=list_token)
            login_stats = wrk_summary(burst.communicate()[0])
            project.wait_until_idle()  # logins wrk gave up on still finish on the server
            runs.append((busy, quiet))
            logins.append(login_stats)
            check(
                login_stats["requests"] > 0 and login_stats["errors"] == 0,
                "login burst: logins complete without errors",
                failures,
            )
            check(busy["errors"] == quiet["errors"] == 0, "login burst: no list errors", failures)
        figures["login_burst"] = summarise(runs, "p99_ms", "p99_ms")
        figures["login_burst"]["logins_per_round"] = [run["requests"] for run in logins]
        figures["login_burst"]["login_p50_ms"] = median([run["p50_ms"] for run in logins])

        print("create...", flush=True)
        create_url = project.url(f"/api/{create_user}/tasks")
        runs = [
            (
                load(create_url, plan.seconds, method="POST", token=create_token, body=NEW_TASK),
                load(ceiling_url, plan.seconds),
            )
            for _ in rounds
        ]
        figures["create"] = summarise(runs, "rps", "rps")
        acknowledged = sum(create_run["requests"] for create_run, _ in runs)
        _, headers, _ = call("GET", create_url + "?limit=1", token=create_token)
        stored = int(headers["X-Total-Count"])
        # wrk stops with up to one request per connection in flight; the server still
        # completes those, so a few more may be stored than wrk counted, never fewer.
        figures["create"].update(acknowledged=acknowledged, stored=stored)
        check(
            all(create_run["errors"] == 0 for create_run, _ in runs), "create: 0 errors", failures
        )
        check(
            acknowledged <= stored <= acknowledged + CONNECTIONS * plan.rounds,
            "create: every created task is stored",
            failures,
        )

        figures["memory"] = {
            "project_mb": project.peak_memory_mb(),
            "scale_mb": scale.peak_memory_mb(),
        }
        figures["load_generator_cpu_max"] = max(load_generator_cpu)
        return figures, failures
    finally:
        for server in servers:
            server.stop()


def load_with_cpu_accounting(
    url: str, seconds: int, server: Server, postgres_pid: int | None, **request
) -> dict:
    """Run wrk, unpinned, and say where the machine's CPU went meanwhile, in cores: the app
    (all its workers), the PostgreSQL server (all its backends), wrk, and other programs."""
    before_app, before_workers = server.cpu_seconds(), server.worker_cpu_seconds()
    before_postgres = tree_cpu_seconds(postgres_pid) if postgres_pid else 0.0
    before_busy, started = machine_busy_seconds(), time.monotonic()
    stats = load(
        url, seconds, server=server, load_cpus=None, reconnect_every=RECONNECT_EVERY, **request
    )
    wall = time.monotonic() - started
    cores = {"app": (server.cpu_seconds() - before_app) / wall}
    if postgres_pid:  # only for a server of our own: another may not even be on this machine
        cores["postgres"] = (tree_cpu_seconds(postgres_pid) - before_postgres) / wall
    cores["wrk"] = stats["load_generator_cpu"]
    cores["other programs"] = (machine_busy_seconds() - before_busy) / wall - sum(cores.values())
    cores["idle"] = len(os.sched_getaffinity(0)) - sum(cores.values())
    stats["cores"] = cores
    stats["worker_cores"] = sorted(
        (
            (cpu - before_workers.get(pid, 0.0)) / wall
            for pid, cpu in server.worker_cpu_seconds().items()
        ),
        reverse=True,
    )
    stats["postgres_cpu_ms"] = cores.get("postgres", 0.0) * wall * 1000 / max(1, stats["requests"])
    return stats


def start_postgres(directory: Path) -> tuple[str, int]:
    """A throwaway PostgreSQL server (.ci/postgres), unpinned; returns its URL and the
    postmaster's pid, whose process tree holds every backend."""
    started = subprocess.run(
        [REPOSITORY / ".ci" / "postgres", "start", directory],
        check=False,
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise SystemExit(f".ci/postgres could not start a server:\n{started.stderr}")
    postmaster_pid = int((directory / "data" / "postmaster.pid").read_text().split()[0])
    return started.stdout.strip(), postmaster_pid


def run_postgres(
    plan: Plan, workdir: Path, database_url: str, postgres_pid: int | None
) -> tuple[dict, list[str]]:
    """List and create throughput on PostgreSQL, with 1 worker and with 2, in alternating
    rounds. Nothing is pinned: both set-ups share every CPU with PostgreSQL and wrk, as
    they would on a real small machine, so the only difference is the number of workers."""
    failures: list[str] = []
    environment = {**server_environment(workdir), "DATABASE_URL": database_url}
    servers = {
        workers: Server(
            "main:app", environment, workdir / f"workers-{workers}.log", cpus=None, workers=workers
        )
        for workers in (1, 2)
    }
    run_tag = secrets.token_hex(4)  # the database may be one the caller gave us: fresh emails
    try:
        urls: dict[int, dict] = {}
        for workers, server in servers.items():
            server.wait_until_serving("/health")
            server.wait_until_idle()  # every worker has imported the app and is accepting
            check(
                len(server.worker_cpu_seconds()) == (workers if workers > 1 else 0),
                f"{workers} worker(s) running",
                failures,
            )
            list_user, list_token = sign_up(server, f"list-{workers}-{run_tag}@bench.example")
            add_tasks_over_http(server, list_user, list_token, 20)
            create_user, create_token = sign_up(server, f"create-{workers}-{run_tag}@bench.example")
            urls[workers] = {
                "list": (server.url(f"/api/{list_user}/tasks"), list_token),
                "create": (server.url(f"/api/{create_user}/tasks"), create_token),
            }
            load(urls[workers]["list"][0], 1, token=list_token, load_cpus=None)  # warm-up
        rounds = range(plan.rounds)
        figures: dict = {}

        def measure(scenario: str, **request) -> list[tuple[dict, dict]]:
            """(2 workers, 1 worker) per round, alternating."""
            pairs = []
            for _ in rounds:
                one, two = [
                    load_with_cpu_accounting(
                        urls[workers][scenario][0],
                        plan.seconds,
                        servers[workers],
                        postgres_pid,
                        token=urls[workers][scenario][1],
                        **request,
                    )
                    for workers in (1, 2)
                ]
                pairs.append((two, one))
            return pairs

        for scenario, request in [("list", {}), ("create", {"method": "POST", "body": NEW_TASK})]:
            print(f"{scenario} on PostgreSQL, 1 and 2 workers...", flush=True)
            pairs = measure(scenario, **request)
            figure = summarise(pairs, "rps", "rps")
            for position, workers in [(1, 1), (0, 2)]:
                runs = [pair[position] for pair in pairs]
                figure[f"workers_{workers}"] = {
                    "rps_rounds": [run["rps"] for run in runs],
                    "acknowledged": sum(run["requests"] for run in runs),
                    "p50_ms": median([run["p50_ms"] for run in runs]),
                    "postgres_cpu_ms": median([run["postgres_cpu_ms"] for run in runs]),
                    "app_cpu_ms": median([run["cpu_ms"] for run in runs]),
                    "cores": {
                        part: median([run["cores"][part] for run in runs])
                        for part in runs[0]["cores"]
                    },
                    "worker_cores": [
                        median(shares)
                        for shares in zip(*[run["worker_cores"] for run in runs], strict=False)
                    ],
                }
            figures[f"postgres_{scenario}"] = figure
            check(
                all(run["errors"] == 0 for pair in pairs for run in pair),
                f"{scenario} on PostgreSQL: 0 errors",
                failures,
            )

        for workers, figure in figures["postgres_create"].items():
            if not workers.startswith("workers_"):
                continue
            url, token = urls[int(workers.removeprefix("workers_"))]["create"]
            _, headers, _ = call("GET", url + "?limit=1", token=token)
            figure["stored"] = int(headers["X-Total-Count"])
            # As on SQLite: wrk may stop with one request per connection still in flight.
            check(
                figure["acknowledged"]
                <= figure["stored"]
                <= figure["acknowledged"] + CONNECTIONS * plan.rounds,
                f"create on PostgreSQL, {workers}: every created task is stored",
                failures,
            )
        return figures, failures
    finally:
        for server in servers.values():
            server.stop()


def run_compare(
    plan: Plan, workdir: Path, baseline: Path, baseline_options: tuple[str, ...]
) -> tuple[dict, list[str]]:
    """This code against the code in `baseline` (a checkout of an earlier commit): list and
    create on each, in alternating rounds, one server under load at a time, both on CPU 0."""
    failures: list[str] = []
    environment = server_environment(workdir)
    servers = {
        name: Server(
            "main:app",
            {**environment, "DATABASE_URL": f"sqlite:///{workdir / name}.db"},
            workdir / f"{name}.log",
            code=code,
            options=options,
        )
        for name, code, options in (
            ("current", REPOSITORY, ()),
            ("baseline", baseline, baseline_options),
        )
    }
    try:
        urls = {}
        for name, server in servers.items():
            server.wait_until_serving("/health")
            list_user, list_token = sign_up(server, f"list-{name}@bench.example")
            add_tasks_over_http(server, list_user, list_token, 20)
            create_user, create_token = sign_up(server, f"create-{name}@bench.example")
            urls[name] = {
                "list": (server.url(f"/api/{list_user}/tasks"), list_token),
                "create": (server.url(f"/api/{create_user}/tasks"), create_token),
            }
            load(urls[name]["list"][0], 1, token=list_token)  # warm-up
        figures: dict = {}
        for scenario, method, body in (("list", "GET", None), ("create", "POST", NEW_TASK)):
            print(f"{scenario}...", flush=True)
            runs = []
            for number in range(plan.rounds):
                # Each round runs both; which goes first alternates, so neither always
                # meets the machine as the other left it.
                order = ["current", "baseline"] if number % 2 == 0 else ["baseline", "current"]
                stats = {}
                for name in order:
                    url, token = urls[name][scenario]
                    stats[name] = load(
                        url,
                        plan.seconds,
                        method=method,
                        token=token,
                        body=body,
                        server=servers[name],
                    )
                    check(stats[name]["errors"] == 0, f"{scenario} ({name}): no errors", failures)
                runs.append((stats["current"], stats["baseline"]))
            figures[scenario] = summarise(runs, "rps", "rps")
            figures[f"{scenario}_cpu_ms"] = summarise(runs, "cpu_ms", "cpu_ms")
        figures["memory"] = {name: server.peak_memory_mb() for name, server in servers.items()}
        return figures, failures
    finally:
        for server in servers.values():
            server.stop()


def report_compare(figures: dict, reference: str) -> None:
    print(f"\n{'this code against ' + reference:34} {'this':>9} {'before':>10} {'ratio':>7}")
    for scenario in ("list", "create"):
        figure = figures[scenario]
        rounds = ", ".join(f"{ratio:.2f}" for ratio in figure["ratios"])
        print(
            f"{scenario + ': req/s':34} {figure['project']:9.1f} {figure['reference']:10.1f} "
            f"{figure['ratio']:7.2f}  (rounds: {rounds})"
        )
        cpu = figures[f"{scenario}_cpu_ms"]
        print(
            f"{scenario + ': CPU ms per request':34} {cpu['project']:9.2f} "
            f"{cpu['reference']:10.2f} {cpu['ratio']:7.2f}"
        )
    memory = figures["memory"]
    print(f"{'peak RSS (MB)':34} {memory['current']:9.1f} {memory['baseline']:10.1f}")


def summarise(runs: list[tuple[dict, dict]], figure: str, reference_figure: str) -> dict:
    """Medians of a figure and of its reference, and the median of their round-by-round
    ratios (not the ratio of the medians: each round's pair ran under the same noise)."""
    return {
        "project": median([project_run[figure] for project_run, _ in runs]),
        "reference": median([reference_run[reference_figure] for _, reference_run in runs]),
        "ratio": median(
            [
                project_run[figure] / reference_run[reference_figure]
                for project_run, reference_run in runs
            ]
        ),
        "ratios": [
            project_run[figure] / reference_run[reference_figure]
            for project_run, reference_run in runs
        ],
    }


# (figure, what is measured, reference, unit, target test, target text)
TARGETS = [
    (
        "list",
        "list, 20 tasks: req/s",
        "ceiling req/s",
        "req/s",
        lambda f: f["ratio"] >= 0.20,
        ">= 20% of ceiling (stretch 25%)",
    ),
    (
        "create",
        "create, 1 tag: req/s",
        "ceiling list req/s",
        "req/s",
        lambda f: f["ratio"] >= 0.20,
        ">= 20% of ceiling list",
    ),
    (
        "login_burst",
        "list p99, 4 logins running (ms)",
        "list p99, no logins",
        "ms",
        lambda f: f["ratio"] < 3,
        "< 3x",
    ),
    (
        "scale_first_user",
        "list p50, 110k other tasks (ms)",
        "list p50, empty db",
        "ms",
        lambda f: f["ratio"] <= 1.3,
        "<= 1.3x",
    ),
    (
        "scale_second_user",
        "page 50 of 10k p50 (ms)",
        "20-task list p50",
        "ms",
        lambda f: f["ratio"] <= 3,
        "<= 3x",
    ),
]
MEMORY_LIMIT_MB = 120


def report(figures: dict) -> list[str]:
    """Print the table; return the targets that were missed."""
    missed = []
    print(f"\n{'scenario':34} {'project':>9} {'reference':>10} {'ratio':>7}  target")
    for key, label, _reference, _unit, met, target in TARGETS:
        figure = figures[key]
        ok = met(figure)
        if not ok:
            missed.append(key)
        print(
            f"{label:34} {figure['project']:9.1f} {figure['reference']:10.1f} "
            f"{figure['ratio']:7.2f}  {target}: {'met' if ok else 'NOT met'}"
        )
    peak = max(figures["memory"].values())
    if peak >= MEMORY_LIMIT_MB:
        missed.append("memory")
    print(
        f"{'peak RSS (VmHWM, MB)':34} {peak:9.1f} {'':10} {'':7}  < {MEMORY_LIMIT_MB} MB: "
        f"{'met' if peak < MEMORY_LIMIT_MB else 'NOT met'}"
    )
    cpu = figures["list_cpu_ms"]
    print(
        f"\nCPU time per list request: {cpu['project']:.2f} ms, ceiling {cpu['ceiling']:.2f} ms "
        f"(ceiling/project {cpu['ratio']:.2f}, the req/s ratio without other programs' noise)"
    )
    burst = figures["login_burst"]
    print(
        f"logins completed per burst round: {burst['logins_per_round']} "
        f"(median login {burst['login_p50_ms']:.0f} ms); created tasks: "
        f"{figures['create']['acknowledged']} acknowledged, {figures['create']['stored']} stored"
    )
    print(
        f"wrk used at most {figures['load_generator_cpu_max']:.0%} of its CPU; "
        f"round-by-round ratios are in {RESULTS_FILE.relative_to(REPOSITORY)}"
    )
    return missed


def report_postgres(figures: dict) -> list[str]:
    """Print the PostgreSQL table and where the CPU went; return the targets that were missed."""
    print(f"\n{'PostgreSQL, 16 connections':34} {'1 worker':>9} {'2 workers':>10} {'2w/1w':>7}")
    for scenario in ("list", "create"):
        figure = figures[f"postgres_{scenario}"]
        rounds = ", ".join(f"{ratio:.2f}" for ratio in figure["ratios"])
        print(
            f"{scenario + ': req/s':34} {figure['reference']:9.1f} {figure['project']:10.1f} "
            f"{figure['ratio']:7.2f}  (rounds: {rounds})"
        )
    for scenario in ("list", "create"):
        print(
            f"\nwhere the CPU went during {scenario} (cores, of "
            f"{len(os.sched_getaffinity(0))}; medians):"
        )
        for workers in (1, 2):
            figure = figures[f"postgres_{scenario}"][f"workers_{workers}"]
            parts = ", ".join(f"{part} {cores:.2f}" for part, cores in figure["cores"].items())
            split = (
                " = " + " + ".join(f"{cores:.2f}" for cores in figure["worker_cores"])
                if figure["worker_cores"]
                else ""
            )
            postgres = (
                f", PostgreSQL {figure['postgres_cpu_ms']:.2f} ms"
                if "postgres" in figure["cores"]
                else ""
            )
            print(
                f"  {workers} worker(s): {parts}; app{split}; CPU per request: app "
                f"{figure['app_cpu_ms']:.2f} ms{postgres}"
            )
    create = figures["postgres_create"]
    print(
        "created tasks: "
        + "; ".join(
            f"{workers} worker(s) {create[f'workers_{workers}']['acknowledged']} acknowledged, "
            f"{create[f'workers_{workers}']['stored']} stored"
            for workers in (1, 2)
        )
    )
    beats = figures["postgres_list"]["ratio"] > 1
    print(f"2 workers beat 1 on list throughput: {'yes' if beats else 'NO'}")
    return [] if beats else ["postgres_list"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: check that everything runs, enforce no target",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="instead: list and create on PostgreSQL with 1 and 2 workers, on "
        "a throwaway server (.ci/postgres), or on the database at "
        "$BENCH_DATABASE_URL (postgresql+psycopg://...) if set, which gets "
        "a few users and tasks",
    )
    parser.add_argument(
        "--compare",
        metavar="COMMIT",
        help="instead: list and create of this code against COMMIT's, in alternating rounds "
        "(default 5), on SQLite; writes bench/results-compare.json",
    )
    parser.add_argument(
        "--baseline-options",
        default="",
        help="with --compare: uvicorn options for COMMIT's server only, such as "
        "'--http h11 --loop asyncio' for a commit whose requirements had plain uvicorn",
    )
    arguments = parser.parse_args()
    plan = SMOKE if arguments.smoke else FULL
    if arguments.rounds:
        plan = Plan(
            arguments.rounds,
            *[
                getattr(plan, name)
                for name in ("seconds", "other_users", "other_users_tasks", "second_user_tasks")
            ],
        )
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("the benchmark needs two CPUs: one for the server, one for wrk")
    started = datetime.now(UTC)
    if arguments.compare:
        rounds = arguments.rounds or (1 if arguments.smoke else 5)
        compare(arguments.compare, tuple(arguments.baseline_options.split()), rounds, plan)
        return
    with tempfile.TemporaryDirectory(prefix="todo-bench-") as workdir:
        if not arguments.postgres:
            figures, failures = run(plan, Path(workdir))
        elif os.environ.get("BENCH_DATABASE_URL"):  # not an argument: ps would show its password
            figures, failures = run_postgres(
                plan, Path(workdir), os.environ["BENCH_DATABASE_URL"], None
            )
        else:
            # Not inside workdir: the server runs as the postgres user, who cannot enter it.
            server_dir = Path(tempfile.mkdtemp(prefix="todo-bench-postgres-"))
            try:
                database_url, postmaster_pid = start_postgres(server_dir)
                figures, failures = run_postgres(plan, Path(workdir), database_url, postmaster_pid)
            finally:
                subprocess.run([REPOSITORY / ".ci" / "postgres", "stop", server_dir], check=True)
    missed = report_postgres(figures) if arguments.postgres else report(figures)
    results_file = POSTGRES_RESULTS_FILE if arguments.postgres else RESULTS_FILE
    results_file.write_text(
        json.dumps(
            {
                "date": started.isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "smoke": arguments.smoke,
                "rounds": plan.rounds,
                "seconds_per_run": plan.seconds,
                "figures": figures,
                "targets_missed": missed,
                "failures": failures,
            },
            indent=2,
        )
        + "\n"
    )
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed: {failures}")
    if missed and not arguments.smoke:
        raise SystemExit(f"targets not met: {', '.join(missed)}")


def compare(reference: str, options: tuple[str, ...], rounds: int, plan: Plan) -> None:
    """Check out `reference` beside this code, run both, print and keep the comparison."""
    plan = Plan(rounds, plan.seconds, 0, 0, 0)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="todo-bench-") as workdir:
        baseline = Path(workdir) / "baseline"
        git = ["git", "-C", str(REPOSITORY)]
        subprocess.run([*git, "worktree", "add", "--detach", baseline, reference], check=True)
        try:
            figures, failures = run_compare(plan, Path(workdir), baseline, options)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", baseline], check=True)
    report_compare(figures, reference)
    COMPARE_RESULTS_FILE.write_text(
        json.dumps(
            {
                "date": started.isoformat(timespec="seconds"),
                "reference": reference,
                "baseline_options": list(options),
                "rounds": plan.rounds,
                "seconds_per_run": plan.seconds,
                "figures": figures,
                "failures": failures,
            },
            indent=2,
        )
        + "\n"
    )
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed: {failures}")


if __name__ == "__main__":
    main()
