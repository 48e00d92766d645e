"""fastworker's Python client: submit tasks to a fastworker cluster and get their results.

The protocol is spoken by fastworker's Rust client, compiled into this
package, so Python and Rust clients behave alike. See docs/python-client.md.

    from fastworker import Client
    client = Client("tcp://127.0.0.1:5555")
    client.call("add", [2, 3])            # 5
    task_id = client.delay("add", {"x": 2, "y": 3})
    client.result(task_id)                # 5
    await client.call_async("add", [2, 3])
    workflow_id = client.workflow(chain(task("add", 1, 2), task("add", 10)))
    client.wait_workflow(workflow_id)     # 13
"""

from . import errors
from ._native import DEFAULT_ADDRESS, Client, TaskReport
from .errors import *  # noqa: F401,F403
from .workflows import chain, chord, group, task

__all__ = ["Client", "TaskReport", "DEFAULT_ADDRESS", "errors", "chain", "chord", "group", "task", *errors.__all__]
