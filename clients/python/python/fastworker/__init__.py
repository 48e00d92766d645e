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

from . import errors as errors
from ._native import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from ._native import Client as Client
from ._native import TaskReport as TaskReport
from .errors import (
    FastworkerError as FastworkerError,
    UnknownTask as UnknownTask,
    BadArguments as BadArguments,
    TaskFailed as TaskFailed,
    TaskPanicked as TaskPanicked,
    TimedOut as TimedOut,
    TaskTimedOut as TaskTimedOut,
    Cancelled as Cancelled,
    Busy as Busy,
    Unreachable as Unreachable,
    Unauthenticated as Unauthenticated,
    Forbidden as Forbidden,
    UnknownTaskId as UnknownTaskId,
    UnknownWorkflowId as UnknownWorkflowId,
    ExpiredTaskId as ExpiredTaskId,
    InvalidTaskId as InvalidTaskId,
    UnknownSchedule as UnknownSchedule,
    AlreadyFinished as AlreadyFinished,
    IdConflict as IdConflict,
    BadRequest as BadRequest,
    NoWorker as NoWorker,
    ShuttingDown as ShuttingDown,
    TooLarge as TooLarge,
    InvalidAddress as InvalidAddress,
    InvalidKey as InvalidKey,
    ProtocolError as ProtocolError,
)
from .workflows import chain as chain
from .workflows import chord as chord
from .workflows import group as group
from .workflows import task as task

__all__ = ["Client", "TaskReport", "DEFAULT_ADDRESS", "errors", "chain", "chord", "group", "task", *errors.__all__]
