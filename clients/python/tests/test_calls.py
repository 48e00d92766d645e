"""Every call of the client, blocking and async, against a real control plane."""

import asyncio
import threading
import time
import uuid

import pytest

import fastworker


def test_call_takes_positional_and_named_arguments(client):
    assert client.call("add", [2, 3]) == 5
    assert client.call("add", (20, 22)) == 42
    assert client.call("add", {"x": 4, "y": 5}) == 9
    # Structured arguments and results (a struct of the task's plugin).
    assert client.call("midpoint", [{"x": 0.0, "y": 2.0}, {"x": 4.0, "y": 6.0}]) == {"x": 2.0, "y": 4.0}
    assert client.call("report", {"label": "daily"}) == "daily report: all good"


def test_call_with_options(client):
    started = time.monotonic()
    assert client.call("add", [1, 2], priority="low", countdown=0.3) == 3
    assert time.monotonic() - started >= 0.25
    task_id = str(uuid.uuid4())
    assert client.call("add", [3, 4], task_id=task_id, retries=1, retry_delay=0.1) == 7
    assert client.status(task_id).result == 7
    # The task's report says which priority it ran at.
    assert client.status(task_id).priority == "high"


def test_delay_status_wait_result(client):
    task_id = client.delay("sleep_ms", [300])
    assert isinstance(task_id, str) and uuid.UUID(task_id)
    report = client.status(task_id)
    assert report.task_id == task_id and report.task_name == "sleep_ms"
    assert report.state in ("queued", "running") and not report.finished
    final = client.wait(task_id, timeout=5)
    # sleep_ms answers the milliseconds it slept.
    assert final.state == "succeeded" and final.finished and 300 <= final.result < 3000
    assert final.attempts == 1 and final.finished_ms >= final.started_ms >= final.created_ms
    assert client.result(task_id) == final.result


def test_delay_with_eta(client):
    import datetime

    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.3)
    task_id = client.delay("add", [5, 6], eta=eta)
    assert client.status(task_id).state == "scheduled"
    assert client.result(task_id, timeout=5) == 11


def test_batch(client):
    outcomes = client.batch([("add", [1, 2]), ("add", {"x": 3, "y": 4}, {"priority": "critical"}), ("no_such", [])])
    assert len(outcomes) == 3
    assert client.result(outcomes[0]) == 3
    assert client.result(outcomes[1]) == 7
    assert isinstance(outcomes[2], fastworker.UnknownTask)
    assert "no_such" in str(outcomes[2]) and outcomes[2].kind == "UnknownTask"


def test_cancel(client):
    task_id = client.delay("add", [1, 1], countdown=30)
    report = client.cancel(task_id)
    assert report.state == "cancelled" and report.finished
    running = client.delay("sleep_ms", [60_000])
    deadline = time.monotonic() + 5
    while client.status(running).state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.cancel(running).task_id == running
    # The task sees its cancellation flag and ends.
    assert client.wait(running, timeout=5).finished


def test_workers(client):
    # The only subworkers are this control plane's own worker processes.
    workers = client.workers()
    ids = [w["worker_id"] for w in workers["subworkers"]]
    assert workers["total_subworkers"] == len(ids) >= 1 and all(i.startswith("local-") for i in ids), workers


def test_schedules(client):
    names = {schedule["task_name"] for schedule in client.schedules()}
    assert {"tick", "report"} <= names
    assert client.pause_schedule("tick") is None
    assert next(s for s in client.schedules() if s["task_name"] == "tick")["paused"] is True
    client.pause_schedule("tick", paused=False)
    assert next(s for s in client.schedules() if s["task_name"] == "tick")["paused"] is False

    async def main():
        await client.pause_schedule_async("report")
        return await client.schedules_async()

    assert next(s for s in asyncio.run(main()) if s["task_name"] == "report")["paused"] is True
    with pytest.raises(fastworker.UnknownSchedule):
        client.pause_schedule("add")


def test_results_are_python_values(client):
    assert isinstance(client.call("fib", [10]), int) and client.call("fib", [10]) == 55
    assert isinstance(client.call("hash_bytes", [3]), str)
    assert client.call("flaky", [1]) == 2


def test_async_forms(client):
    async def main():
        assert await client.call_async("add", [2, 2]) == 4
        task_id = await client.delay_async("add", {"x": 1, "y": 9})
        assert (await client.wait_async(task_id)).result == 10
        assert await client.result_async(task_id) == 10
        assert (await client.status_async(task_id)).state == "succeeded"
        later = await client.delay_async("add", [0, 0], countdown=30)
        assert (await client.cancel_async(later)).state == "cancelled"
        [first, second] = await client.batch_async([("add", [1, 1]), ("add", [2, 2])])
        assert await client.result_async(first) == 2 and await client.result_async(second) == 4
        workers = await client.workers_async()
        assert workers["active_subworkers"] == len(workers["subworkers"]) >= 1

    asyncio.run(main())


def test_thousand_concurrent_async_calls_each_get_their_own_result(client):
    async def main():
        return await asyncio.gather(*(client.call_async("add", [i, i]) for i in range(1000)))

    assert asyncio.run(main()) == [2 * i for i in range(1000)]


def test_blocking_calls_release_the_gil(client):
    # While one thread waits on a long call, another keeps running Python.
    done = []
    waiter = threading.Thread(target=lambda: done.append(client.call("sleep_ms", [1000])))
    waiter.start()
    started = last = time.monotonic()
    longest_gap = 0.0
    while waiter.is_alive() and last - started < 5:
        now = time.monotonic()
        longest_gap = max(longest_gap, now - last)
        last = now
    waiter.join()
    assert len(done) == 1 and done[0] >= 1000
    # Held through the call, the GIL would stop this thread for the whole second.
    assert longest_gap < 0.4, f"the main thread stood still {longest_gap:.3f} s while the call waited"


def test_client_is_shared_across_threads(client):
    results = {}

    def work(n):
        results[n] = [client.call("add", [n, i]) for i in range(50)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: [n + i for i in range(50)] for n in range(8)}


def test_client_attributes():
    client = fastworker.Client()
    assert client.address == fastworker.DEFAULT_ADDRESS == "tcp://127.0.0.1:5555"
    assert client.timeout == 30.0
    assert "127.0.0.1:5555" in repr(client)


def test_ctrl_c_interrupts_a_blocking_call(control_plane):
    import signal
    import subprocess
    import sys

    script = (
        "import sys, fastworker\n"
        f"client = fastworker.Client({control_plane.address!r}, timeout=60)\n"
        "print('calling', flush=True)\n"
        "try:\n"
        "    client.call('sleep_ms', [20000])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(0.5)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().strip() == "interrupted"
        assert time.monotonic() - sent < 2
        assert child.wait(timeout=5) == 0
    finally:
        child.kill()
        child.wait()


def test_async_calls_abandoned_and_on_several_loops(client):
    async def abandon_then_call():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.call_async("sleep_ms", [1000]), 0.1)
        # The abandoned call's outcome arrives later and is dropped; others go on.
        results = await asyncio.gather(*(client.call_async("add", [i, 1]) for i in range(100)))
        await asyncio.sleep(1.2)
        assert await client.call_async("add", [2, 2]) == 4
        return results

    outcomes = {}

    def on_own_loop(n):
        outcomes[n] = asyncio.run(abandon_then_call())

    threads = [threading.Thread(target=on_own_loop, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {n: [i + 1 for i in range(100)] for n in range(3)}
    with pytest.raises(RuntimeError):
        client.call_async("add", [1, 1])  # outside a running event loop
