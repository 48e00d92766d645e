"""fastworker's Python client: submit tasks to a fastworker cluster and get their results.

The protocol is spoken by fastworker's Rust client, compiled into this
package, so Python and Rust clients behave alike. See docs/python-client.md.

    from fastworker import Client
    client = Client("tcp://127.0.0.1:5555")
    client.call("add", [2, 3])            # 5
    task_id = client.delay("add", {"x": 2, "y": 3})
    client.result(task_id)                # 5
    await client.call_async("add", [2, 3])
"""

from . import errors
from ._native import DEFAULT_ADDRESS, Client, TaskReport
from .errors import *  # noqa: F401,F403

__all__ = ["Client", "TaskReport", "DEFAULT_ADDRESS", "errors", *errors.__all__]
