"""What an editor and a type checker see of the client: every call, option
and exception by name (a test runs `mypy --strict` on this file and on the
FastAPI example)."""

import asyncio
from typing import Any, List, Union

import fastworker
from fastworker import Busy, Client, FastworkerError, TaskFailed, TaskReport, Unreachable, chain, task


def run(client: Client) -> None:
    total: Any = client.call("add", [2, 3], priority="high", retries=2, retry_delay=0.5)
    task_id: str = client.delay("sleep_ms", [100], countdown=1.0, task_id=None)
    report: TaskReport = client.wait(task_id, timeout=5.0)
    print(total, report.state, report.finished, report.error_kind)
    outcomes: List[Union[str, FastworkerError]] = client.batch([("add", [1, 2]), ("add", [3, 4], {"priority": "low"})])
    print(outcomes)
    workflow_id: str = client.workflow(chain(task("add", 1, 2), task("add", 10)))
    print(client.wait_workflow(workflow_id, timeout=5.0))
    try:
        client.call("divide", [1, 0])
    except TaskFailed as failed:
        print(failed.task_name, failed.message)
    except (Busy, Unreachable) as transient:
        print("try again later:", transient.kind)
    except fastworker.errors.FastworkerError as other:
        print(type(other).__name__)


async def run_async(client: Client) -> int:
    result: Any = await client.call_async("add", [2, 3])
    return int(result)


if __name__ == "__main__":
    shared = Client(fastworker.DEFAULT_ADDRESS, timeout=5.0)
    run(shared)
    print(asyncio.run(run_async(shared)))
