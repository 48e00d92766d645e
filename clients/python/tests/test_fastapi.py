"""The FastAPI example answering requests through a real control plane."""

import importlib.util
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"


@pytest.fixture
def http(control_plane, monkeypatch):
    monkeypatch.setenv("FASTWORKER_ADDRESS", control_plane.address)
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with TestClient(module.app) as http:
        yield http


def test_add_answers_with_the_task_result(http):
    response = http.post("/add", json={"x": 20, "y": 22})
    assert response.status_code == 200, response.text
    assert response.json() == {"result": 42}


def test_submit_then_poll(http):
    response = http.post("/tasks/sleep_ms", json={"args": [100]})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    deadline = time.monotonic() + 5
    while True:
        report = http.get(f"/tasks/{task_id}").json()
        if report["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert report["state"] == "succeeded", report
    assert report["task_id"] == task_id and report["task_name"] == "sleep_ms" and report["error"] is None
    assert 100 <= report["result"] < 5000  # the milliseconds it slept


def test_errors_become_status_codes(http):
    unknown = http.post("/tasks/no_such_task", json={"args": []})
    assert unknown.status_code == 404 and unknown.json()["error"] == "UnknownTask"
    bad = http.post("/tasks/add", json={"args": [1]})
    assert bad.status_code == 202
    assert http.get("/tasks/00000000-0000-0000-0000-000000000000").status_code == 404
    assert http.get("/tasks/nonsense").status_code == 422
