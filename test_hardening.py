"""Hardening (issue 3): regressions for what fuzzing found, request logging, and the
live-server checks (crash safety, several workers)."""

from conftest import Account


# --- found by schemathesis (test_fuzz.py); each keeps a plain HTTP test here ---


def test_405_allow_header_names_every_method_of_the_path(client, alice: Account):
    response = client.options(f"{alice.tasks_url}/1", headers=alice.headers)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "GET, PUT, PATCH, DELETE"
