"""The README's curl walkthrough, pasted into bash against a real `uvicorn main:app`."""

import re
import subprocess
from pathlib import Path


README = Path(__file__).with_name("README.md")


def test_the_curl_walkthrough_works_when_pasted_into_a_shell(live_server, tmp_path):
    walkthrough = re.search(r"## Try it with curl.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    server = live_server()
    shell = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", walkthrough.replace("http://127.0.0.1:8000", server.url)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    statuses = re.findall(r"^HTTP/1.1 (\d{3})", shell.stdout, re.M)
    assert statuses == ["201", "200", "204"]
    assert '"completed":true' in shell.stdout
    assert "x-total-count: 1" in shell.stdout
    # The walkthrough cleans up; its last requests used the access token from the refresh.
    assert not (tmp_path / "signup.json").exists() and not (tmp_path / "refresh.json").exists()
