"""A real `uvicorn main:app` in a subprocess, for the tests that need a real server:
a SIGKILL in the middle of writes, several worker processes.

The server runs with a temporary directory as its working directory (its SQLite file,
its generated .jwt_secret and its log live there) and imports the app from the
repository root with --app-dir, so it never touches the checkout's files.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

REPO_ROOT = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS = 60
POLL_INTERVAL_SECONDS = 0.05
# Cleared from the test process's environment (conftest sets some), so the server runs
# with the defaults a user gets, except what a test passes in `env`.
APP_SETTINGS = {
    "DATABASE_URL", "JWT_SECRET", "JWT_SECRET_FILE", "ACCESS_TOKEN_EXPIRE_MINUTES", "BCRYPT_ROUNDS",
    "CORS_ORIGINS", "SQLITE_SYNCHRONOUS", "LOGIN_FAILURE_LIMIT", "LOGIN_FAILURE_WINDOW_MINUTES",
    "AUTH_REQUESTS_PER_MINUTE", "REFRESH_TOKEN_EXPIRE_DAYS", "REFRESH_TOKEN_GRACE_SECONDS",
    "BETTER_AUTH_URL", "BETTER_AUTH_JWKS_URL", "BETTER_AUTH_SECRET",
    "MAX_TASKS_PER_USER", "STATEMENT_TIMEOUT_MS",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """Start with start(), or use as a context manager, which always kills it at the end.

    The app's settings are the defaults, except BCRYPT_ROUNDS=4 (fast tests), a SQLite
    file in `directory`, and what the caller passes in `env`. No JWT_SECRET is set, so
    the server generates .jwt_secret in its directory.
    """

    def __init__(self, directory: Path, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "server.log"
        self.env = {name: value for name, value in os.environ.items() if name not in APP_SETTINGS}
        self.env.update(
            DATABASE_URL=f"sqlite:///{directory / 'todo.db'}", BCRYPT_ROUNDS="4", PYTHONUNBUFFERED="1"
        )
        self.env.update(env or {})
        self.process: subprocess.Popen | None = None

    @property
    def database_path(self) -> Path:
        return self.directory / "todo.db"

    def start(self) -> "LiveServer":
        command = [
            sys.executable, "-m", "uvicorn", "main:app",
            "--app-dir", str(REPO_ROOT),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # A session of its own, so the master and all its workers can be killed together.
            self.process = subprocess.Popen(
                command, cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.wait_until_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self) -> None:
        """Poll until /health answers and every worker has finished starting up."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with httpx2.Client(base_url=self.url, timeout=5) as client:
            while True:
                started = self.log().count("Application startup complete")
                if started >= self.workers:
                    try:
                        if client.get("/health").status_code == 200:
                            return
                    except httpx2.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {START_TIMEOUT_SECONDS}s:\n{self.log()}")
                try:  # waits for the next poll, and notices at once if the server died
                    self.process.wait(timeout=POLL_INTERVAL_SECONDS)
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                except subprocess.TimeoutExpired:
                    pass

    def worker_pids(self) -> set[int]:
        """The master's child processes (its workers, and multiprocessing's helpers)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return {int(pid) for pid in children.split()}

    def kill(self) -> None:
        """SIGKILL the whole server, as a power cut or the OOM killer would: no clean-up runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM for a graceful shutdown; SIGKILL if it does not come within 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
