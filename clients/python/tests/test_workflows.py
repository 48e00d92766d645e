"""Workflows from Python (chains, groups, chords) against a real control plane."""

import asyncio
import time
import uuid

import pytest

import fastworker
from fastworker import chain, chord, group, task


def test_the_helpers_build_the_description():
    assert task("add", 1, 2) == {"task": "add", "args": [1, 2]}
    assert task("add", kwargs={"x": 1}, receive={"key": "y"}, priority="high") == {
        "task": "add", "args": {"x": 1}, "receive": {"key": "y"}, "priority": "high"}
    assert chain(task("noop"), task("noop")) == chain([task("noop"), task("noop")])
    assert chord(group(task("add", 1, 1)), task("sum")) == {
        "chord": {"group": [{"task": "add", "args": [1, 1]}], "then": {"task": "sum", "args": []}}}
    with pytest.raises(TypeError, match="retry"):
        task("add", 1, retry=2)
    with pytest.raises(TypeError, match="not both"):
        task("add", 1, kwargs={"y": 2})
    with pytest.raises(TypeError, match="descriptions"):
        group("add")


def test_a_chain_passes_each_result_along(client):
    workflow_id = client.workflow(chain(task("add", 1, 2), task("add", 10), task("add", 100)))
    assert uuid.UUID(workflow_id)
    assert client.wait_workflow(workflow_id, timeout=20) == 113
    status = client.workflow_status(workflow_id)
    assert status["state"] == "succeeded" and status["finished"] and status["result"] == 113
    assert [m["state"] for m in status["members"]] == ["succeeded"] * 3
    # Each member is a task of its own.
    assert client.status(status["members"][1]["task_id"]).result == 13


def test_a_plain_dict_description_and_a_chord_of_a_group(client):
    description = {"chord": {"group": [{"task": "add", "args": [i, i]} for i in range(50)],
                             "then": {"task": "sum", "args": []}}}
    assert client.wait_workflow(client.workflow(description), timeout=30) == sum(2 * i for i in range(50))
    nested = chain(group(task("add", 1, 1), task("add", 2, 2)), task("sum"))
    assert client.wait_workflow(client.workflow(nested), timeout=20) == 6


def test_the_same_id_does_not_run_twice(client):
    workflow_id = str(uuid.uuid4())
    description = chain(task("add", 20, 22))
    assert client.workflow(description, workflow_id=workflow_id) == workflow_id
    assert client.wait_workflow(workflow_id, timeout=20) == 42
    assert client.workflow(description, workflow_id=workflow_id) == workflow_id
    with pytest.raises(fastworker.IdConflict):
        client.workflow(chain(task("add", 1, 1)), workflow_id=workflow_id)


def test_a_failing_member_raises_task_failed_naming_it(client):
    workflow_id = client.workflow(chain(task("add", 1, 2), task("divide", 0), task("add", 1)))
    with pytest.raises(fastworker.TaskFailed) as caught:
        client.wait_workflow(workflow_id, timeout=20)
    error = caught.value
    assert error.task_name == "divide"
    assert "member 2 ('divide')" in error.message and "cannot divide 3 by zero" in error.message
    status = client.workflow_status(workflow_id)
    assert error.task_id == status["members"][1]["task_id"]
    assert [m["state"] for m in status["members"]] == ["succeeded", "failed", "skipped"]
    assert status["failure"]["task"] == "divide" and status["failure"]["kind"] == "error"
    # A panic and a member whose built arguments do not fit.
    with pytest.raises(fastworker.TaskPanicked):
        client.wait_workflow(client.workflow(group(task("panic_now", "boom"))), timeout=20)
    with pytest.raises(fastworker.BadArguments) as caught:
        client.wait_workflow(client.workflow(chain(task("echo", "x"), task("add", 1))), timeout=20)
    assert caught.value.task_name == "add"


def test_a_member_that_retries_then_succeeds(client):
    # flaky fails its first run, then answers the run's number (2).
    workflow_id = client.workflow(chain(task("flaky", 1, retries=2, retry_delay_ms=50), task("add", 10)))
    assert client.wait_workflow(workflow_id, timeout=20) == 12
    status = client.workflow_status(workflow_id)
    assert client.status(status["members"][0]["task_id"]).attempts == 2


def test_cancelling_a_running_workflow(client):
    workflow_id = client.workflow(chain(task("sleep_ms", 5000), task("add", 1)))
    status = client.cancel_workflow(workflow_id)
    assert status["state"] == "cancelled"
    assert status["members"][1]["state"] == "skipped" and status["members"][1]["task_id"] is None
    with pytest.raises(fastworker.Cancelled):
        client.wait_workflow(workflow_id, timeout=10)
    with pytest.raises(fastworker.AlreadyFinished):
        client.cancel_workflow(workflow_id)


def test_refusals_and_a_bounded_wait(client):
    with pytest.raises(fastworker.BadRequest, match=r"\$\.chain\[1\]"):
        client.workflow({"chain": [{"task": "add", "args": [1, 2]}, {"tusk": "add"}]})
    with pytest.raises(fastworker.BadRequest, match="not JSON"):
        client.workflow({"task": "add", "args": [object()]})
    with pytest.raises(fastworker.UnknownTask):
        client.workflow(chain(task("no_such_task")))
    with pytest.raises(fastworker.InvalidTaskId):
        client.workflow_status("not-a-uuid")
    with pytest.raises(fastworker.UnknownWorkflowId):
        client.workflow_status(str(uuid.uuid4()))
    workflow_id = client.workflow(chain(task("sleep_ms", 2000)))
    started = time.monotonic()
    with pytest.raises(fastworker.TimedOut):
        client.wait_workflow(workflow_id, timeout=0.2)
    assert time.monotonic() - started < 1.5
    client.cancel_workflow(workflow_id)


def test_async_forms(client):
    async def main():
        workflow_id = await client.workflow_async(group(*(task("add", i, 1) for i in range(10))))
        status = await client.workflow_status_async(workflow_id)
        assert status["workflow_id"] == workflow_id
        result = await client.wait_workflow_async(workflow_id, timeout=20)
        slow = await client.workflow_async(chain(task("sleep_ms", 5000)))
        cancelled = await client.cancel_workflow_async(slow)
        return result, cancelled["state"]

    assert asyncio.run(main()) == ([i + 1 for i in range(10)], "cancelled")
