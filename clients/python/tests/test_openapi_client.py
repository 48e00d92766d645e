"""A client generated from a running control plane's /api/openapi.json by a
real generator (openapi-python-client, from PyPI) submits a task, waits for
it and reads an error, all through the generated code (docs/http-api.md)."""

import importlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import ControlPlane

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "fastworker_generated"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The control plane, and the package generated from its document."""
    cp = ControlPlane(gui=True)
    out = tmp_path_factory.mktemp("generated")
    try:
        with urllib.request.urlopen(f"{cp.gui}/api/openapi.json", timeout=10) as response:
            (out / "openapi.json").write_bytes(response.read())
        config = out / "config.json"
        # No formatter runs after generating: the code is imported, not read.
        config.write_text(json.dumps({"package_name_override": PACKAGE, "post_hooks": []}))
        started = time.monotonic()
        generated = subprocess.run(
            [str(GENERATOR), "generate", "--path", str(out / "openapi.json"), "--config", str(config),
             "--meta", "none", "--output-path", str(out / PACKAGE)],
            capture_output=True, text=True, timeout=120,
        )
        took = time.monotonic() - started
        assert generated.returncode == 0, generated.stdout + generated.stderr
        # The generator names what it dropped; nothing may be.
        output = generated.stdout + generated.stderr
        assert "will not be generated" not in output and "Unable to" not in output, output
        assert took < 30, f"generating the client took {took:.1f} s"
        sys.path.insert(0, str(out))
        yield cp, importlib.import_module(PACKAGE)
    finally:
        if str(out) in sys.path:
            sys.path.remove(str(out))
        cp.stop()


def test_every_operation_of_the_document_is_generated(api):
    _, package = api
    names = {p.stem for p in (Path(package.__file__).parent / "api" / "default").glob("*.py")}
    assert {"submit", "submit_batch", "submit_workflow", "status", "wait", "cancel",
            "workflow_status", "wait_workflow", "cancel_workflow", "registered_tasks"} <= names, names


def test_a_generated_client_submits_waits_and_reads_an_error(api):
    cp, package = api
    submit = importlib.import_module(f"{PACKAGE}.api.default.submit")
    wait = importlib.import_module(f"{PACKAGE}.api.default.wait")
    status = importlib.import_module(f"{PACKAGE}.api.default.status")
    models = importlib.import_module(f"{PACKAGE}.models")
    client = package.Client(base_url=cp.gui, timeout=30.0, raise_on_unexpected_status=True)

    accepted = submit.sync(client=client, body=models.Submission(task="add", args=[20, 22]))
    assert isinstance(accepted, models.Task), accepted
    ended = wait.sync(id=accepted.task_id, client=client, timeout_ms=20_000)
    assert isinstance(ended, models.Task), ended
    assert (ended.state, ended.finished, ended.result, ended.task) == (models.TaskState.SUCCEEDED, True, 42, "add")

    # A task that fails: a report, whose failure the generated model reads.
    failed = submit.sync(client=client, body=models.Submission(task="divide", args=[1, 0], wait_ms=20_000))
    assert (failed.state, failed.failure.kind, failed.failure.message) == (
        models.TaskState.FAILED, models.TaskFailureType0Kind.ERROR, "cannot divide 1 by zero")

    # Errors come back as the one Error model, with the API's kinds.
    unknown = status.sync_detailed(id=uuid.uuid4(), client=client)
    assert unknown.status_code == 404
    assert isinstance(unknown.parsed, models.Error) and unknown.parsed.error.kind == "UnknownTaskId"
    refused = submit.sync_detailed(client=client, body=models.Submission(task="no_such_task", args=[]))
    assert refused.status_code == 404 and refused.parsed.error.kind == "UnknownTask", refused.parsed
    assert "no_such_task" in refused.parsed.error.message
    bad = submit.sync_detailed(client=client, body=models.Submission(task="add", args=["x", "y"]))
    assert bad.status_code == 400 and bad.parsed.error.kind == "BadArguments", bad.parsed


def test_the_http_layers_own_refusals_parse_as_the_error_model(api):
    cp, package = api
    models = importlib.import_module(f"{PACKAGE}.models")
    for method, path, body, status in [
        ("GET", "/api/v1/nothing", None, 404),
        ("GET", "/api/v1/tasks", None, 405),
        ("POST", "/api/v1/tasks", b'{"task": "add", "args": ["' + b"x" * (2 << 20) + b'"]}', 413),
    ]:
        request = urllib.request.Request(f"{cp.gui}{path}", data=body, method=method,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status, (method, path)
        error = models.Error.from_dict(json.loads(refused.value.read()))
        assert error.error.kind and error.error.message, (method, path, error)
