"""Every exception type of the client, each provoked for real."""

import asyncio
import subprocess
import time
import uuid

import pytest

import fastworker
from conftest import BIN, free_ports, keygen


def test_hierarchy():
    for name in fastworker.errors.__all__:
        assert issubclass(getattr(fastworker, name), fastworker.FastworkerError)
    assert issubclass(fastworker.TaskPanicked, fastworker.TaskFailed)
    assert issubclass(fastworker.TaskTimedOut, fastworker.TimedOut)
    assert issubclass(fastworker.TimedOut, TimeoutError)
    assert issubclass(fastworker.Unreachable, ConnectionError)
    assert issubclass(fastworker.BadArguments, ValueError)
    assert issubclass(fastworker.ExpiredTaskId, fastworker.UnknownTaskId)


def test_unknown_task(client):
    with pytest.raises(fastworker.UnknownTask) as caught:
        client.call("no_such_task", [1])
    assert "no_such_task" in caught.value.message and caught.value.kind == "UnknownTask"
    with pytest.raises(fastworker.UnknownTask):
        client.delay("no_such_task")


def test_bad_arguments_refused_by_the_task(client):
    with pytest.raises(fastworker.BadArguments) as caught:
        client.call("add", ["two", 3])
    assert "'x'" in str(caught.value) and caught.value.task_name == "add" and caught.value.task_id
    with pytest.raises(fastworker.BadArguments):
        client.call("add", {"x": 1})


def test_bad_arguments_not_json(client):
    for args, reason in [
        ([object()], "not JSON"),
        ([float("nan")], "not a finite number"),
        ([2**64], "64 bits"),
        ({1: 2}, "must be a str"),
        (5, "list or tuple"),
    ]:
        with pytest.raises(fastworker.BadArguments, match=reason):
            client.call("add", args)
    nested = []
    nested.append(nested)
    with pytest.raises(fastworker.BadArguments, match="levels deep"):
        client.call("add", nested)


def test_task_failed_carries_the_task_message(client):
    with pytest.raises(fastworker.TaskFailed) as caught:
        client.call("divide", [7, 0])
    error = caught.value
    assert type(error) is fastworker.TaskFailed
    assert error.message == "cannot divide 7 by zero"
    assert error.task_name == "divide" and uuid.UUID(error.task_id)
    task_id = client.delay("divide", [1, 0])
    with pytest.raises(fastworker.TaskFailed, match="cannot divide 1 by zero"):
        client.result(task_id)
    report = client.wait(task_id)
    assert report.state == "failed" and report.error == "cannot divide 1 by zero" and report.error_kind == "error"


def test_task_panicked(client):
    with pytest.raises(fastworker.TaskPanicked, match="on purpose"):
        client.call("panic_now", ["on purpose"])


def test_timed_out_waiting_for_a_reply(control_plane):
    impatient = control_plane.client(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(fastworker.TimedOut) as caught:
        impatient.call("sleep_ms", [3000])
    assert type(caught.value) is fastworker.TimedOut
    assert time.monotonic() - started < 2.5


def test_timed_out_waiting_for_a_task(client):
    task_id = client.delay("sleep_ms", [3000])
    with pytest.raises(fastworker.TimedOut):
        client.wait(task_id, timeout=0.2)
    with pytest.raises(fastworker.TimedOut):
        client.result(task_id, timeout=0.2)
    client.cancel(task_id)


def test_task_timed_out(client):
    with pytest.raises(fastworker.TaskTimedOut) as caught:
        client.call("sleep_ms", [5000], task_timeout=0.2)
    assert caught.value.task_name == "sleep_ms"


def test_cancelled(client):
    task_id = client.delay("add", [1, 2], countdown=30)
    client.cancel(task_id)
    with pytest.raises(fastworker.Cancelled) as caught:
        client.result(task_id)
    assert caught.value.task_id == task_id


def test_already_finished(client):
    task_id = client.delay("add", [1, 2])
    client.wait(task_id)
    with pytest.raises(fastworker.AlreadyFinished):
        client.cancel(task_id)


def test_unknown_and_invalid_task_ids(client):
    with pytest.raises(fastworker.UnknownTaskId) as caught:
        client.status(str(uuid.uuid4()))
    assert caught.value.kind == "UnknownTaskId"
    with pytest.raises(fastworker.UnknownTaskId):
        client.cancel(str(uuid.uuid4()))
    with pytest.raises(fastworker.InvalidTaskId):
        client.status("not-a-uuid")


def test_expired_task_id(start_control_plane):
    client = start_control_plane("--result-cache-size", "1").client()
    first = client.delay("add", [1, 1])
    client.wait(first)
    client.call("add", [2, 2])
    with pytest.raises(fastworker.ExpiredTaskId, match="evicted"):
        client.status(first)


def test_id_conflict(client):
    task_id = str(uuid.uuid4())
    client.delay("add", [1, 1], task_id=task_id)
    with pytest.raises(fastworker.IdConflict):
        client.delay("add", [5, 5], task_id=task_id)


def test_bad_request(client):
    with pytest.raises(fastworker.BadRequest, match="--max-countdown"):
        client.delay("add", [1, 1], countdown=300 * 24 * 3600)
    with pytest.raises(fastworker.BadRequest, match="priority"):
        client.delay("add", [1, 1], priority="urgent")
    with pytest.raises(fastworker.BadRequest):
        client.delay("add", [1, 1], countdown=-1)


def test_busy(start_control_plane):
    client = start_control_plane("--max-queued-tasks", "1").client()
    first = client.delay("sleep_ms", [2000])
    with pytest.raises(fastworker.Busy, match="--max-queued-tasks") as caught:
        client.delay("add", [1, 1])
    assert caught.value.kind == "Busy"
    client.cancel(first)


def test_no_worker(start_control_plane):
    client = start_control_plane("--concurrency", "0").client()
    with pytest.raises(fastworker.NoWorker, match="--concurrency 0"):
        client.call("add", [1, 1])


def test_not_yet_provided_is_no_worker(start_control_plane):
    # Within its restart window a control plane waits for subworkers to
    # offer a task it does not know; the client retries until its timeout.
    cp = start_control_plane("--restart-window", "60")
    with pytest.raises(fastworker.NoWorker) as caught:
        cp.client(timeout=0.5).call("no_such_task")
    assert caught.value.kind == "NotYetProvided"


def test_unreachable():
    client = fastworker.Client(f"tcp://127.0.0.1:{free_ports(6)}", timeout=0.5)
    with pytest.raises(fastworker.Unreachable, match="is a control plane running there"):
        client.call("add", [1, 1])

    async def main():
        await client.status_async(str(uuid.uuid4()))

    with pytest.raises(fastworker.Unreachable):
        asyncio.run(main())


def test_invalid_address_and_timeout():
    with pytest.raises(fastworker.InvalidAddress):
        fastworker.Client("http://127.0.0.1:5555")
    with pytest.raises(ValueError):
        fastworker.Client(timeout=0)


def test_too_large(client):
    with pytest.raises(fastworker.TooLarge):
        client.call("hash_bytes", ["x" * (17 * 1024 * 1024)])


def test_keys(start_control_plane, tmp_path):
    cluster = keygen(tmp_path, "cluster.key")
    client_key = keygen(tmp_path, "client.key", role="client", source=cluster)
    worker_key = keygen(tmp_path, "worker.key", role="worker", source=cluster, worker_id="sw1")
    other = keygen(tmp_path, "other.key")
    cp = start_control_plane("--cluster-key-file", str(cluster), key=str(cluster))
    assert cp.client(key=str(client_key)).call("add", [1, 2]) == 3
    with pytest.raises(fastworker.Unauthenticated):
        cp.client(key=None).call("add", [1, 2])
    with pytest.raises(fastworker.Unauthenticated):
        cp.client(key=str(other)).call("add", [1, 2])
    # Only an operator may pause a schedule; a client key is refused.
    with pytest.raises(fastworker.Forbidden, match="operator"):
        cp.client(key=str(client_key)).pause_schedule("tick")
    cp.client(key=str(cluster)).pause_schedule("tick")
    # A worker key holds no client key to sign with.
    with pytest.raises(fastworker.InvalidKey, match="no client key"):
        fastworker.Client(cp.address, key=str(worker_key))
    with pytest.raises(fastworker.InvalidKey):
        fastworker.Client(cp.address, key=str(tmp_path / "missing.key"))
