"""The README's curl walkthrough, pasted into bash against a real `uvicorn main:app`."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

README = Path(__file__).with_name("README.md")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_curl_walkthrough_works_when_pasted_into_a_shell(tmp_path):
    walkthrough = re.search(r"## Try it with curl.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/todo.db", "BCRYPT_ROUNDS": "4"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(README.parent), "--port", str(port)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(600):  # poll until the server is ready (up to ~30 s on a busy machine)
                assert server.poll() is None, "the server exited during start-up"
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            shell = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", walkthrough.replace("8000", str(port))],
                cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )
    finally:
        server.kill()
        server.wait()
    assert shell.returncode == 0, shell.stderr
    statuses = re.findall(r"^HTTP/1.1 (\d{3})", shell.stdout, re.M)
    assert statuses == ["201", "200", "204"]
    assert '"completed":true' in shell.stdout
    assert "x-total-count: 1" in shell.stdout
    assert not (tmp_path / "signup.json").exists()
