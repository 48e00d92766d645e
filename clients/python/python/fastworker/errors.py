"""The exceptions of the fastworker client.

Every error a call raises is a ``FastworkerError``; its class says what
happened, so code can catch exactly what it handles. Each carries:

- ``message``: what went wrong and what to do, for people (also ``str(error)``);
- ``kind``: the control plane's error kind (``"Busy"``, ``"UnknownTask"``...)
  when the control plane refused the request, else ``None``;
- ``task_id`` and ``task_name``: the task, when the error is a task's ending.
"""

from typing import Optional


class FastworkerError(Exception):
    """The root of every fastworker client error."""

    def __init__(
        self,
        message: str,
        *,
        kind: Optional[str] = None,
        task_id: Optional[str] = None,
        task_name: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.task_id = task_id
        self.task_name = task_name


class UnknownTask(FastworkerError):
    """No worker of the cluster provides a task of that name."""


class BadArguments(FastworkerError, ValueError):
    """The arguments do not fit the task's parameters, or are not JSON."""


class TaskFailed(FastworkerError):
    """The task ran and returned an error; ``message`` is the task's own."""


class TaskPanicked(TaskFailed):
    """The task ran and panicked; ``message`` is the panic's."""


class TimedOut(FastworkerError, TimeoutError):
    """No answer within the call's timeout, or a task not ended within a wait."""


class TaskTimedOut(TimedOut):
    """The task ran past its own timeout and was stopped."""


class Cancelled(FastworkerError):
    """The task was cancelled before it ended."""


class Busy(FastworkerError):
    """A limit of the control plane was reached (the message names it): retry later."""


class Unreachable(FastworkerError, ConnectionError):
    """Nothing answers at the address: no control plane runs there, or the network is down."""


class Unauthenticated(FastworkerError):
    """The request or the reply is not sealed with a key of the cluster (missing or wrong key)."""


class Forbidden(FastworkerError):
    """The key's role may not do this (a worker key submitting a task, say)."""


class UnknownTaskId(FastworkerError):
    """The control plane does not know this task id."""


class UnknownWorkflowId(FastworkerError):
    """The control plane does not know this workflow id (or it ended long enough ago to be forgotten)."""


class ExpiredTaskId(UnknownTaskId):
    """The task ended, but its result has left the control plane's cache."""


class InvalidTaskId(FastworkerError, ValueError):
    """The text given as a task id (or a workflow id) is not a UUID."""


class UnknownSchedule(FastworkerError):
    """No periodic task of that name."""


class AlreadyFinished(FastworkerError):
    """The task has already ended, so it cannot be cancelled."""


class IdConflict(FastworkerError):
    """The task id is already used by another task (another name or arguments)."""


class BadRequest(FastworkerError, ValueError):
    """An option asks for what the control plane does not allow (a countdown too far, too many retries...)."""


class NoWorker(FastworkerError):
    """The task is known, but no worker can run it now."""


class ShuttingDown(FastworkerError):
    """The control plane is stopping and takes no new tasks."""


class TooLarge(FastworkerError, ValueError):
    """The request is larger than a frame may be."""


class InvalidAddress(FastworkerError, ValueError):
    """The address is not a base address (tcp://HOST:PORT or tls+tcp://HOST:PORT)."""


class InvalidKey(FastworkerError):
    """The key file cannot be read or used."""


class ProtocolError(FastworkerError):
    """The control plane answered something this client does not expect (another version?)."""


# Written out, so that type checkers see every name (a test checks it against the classes).
__all__ = [
    "FastworkerError",
    "UnknownTask",
    "BadArguments",
    "TaskFailed",
    "TaskPanicked",
    "TimedOut",
    "TaskTimedOut",
    "Cancelled",
    "Busy",
    "Unreachable",
    "Unauthenticated",
    "Forbidden",
    "UnknownTaskId",
    "UnknownWorkflowId",
    "ExpiredTaskId",
    "InvalidTaskId",
    "UnknownSchedule",
    "AlreadyFinished",
    "IdConflict",
    "BadRequest",
    "NoWorker",
    "ShuttingDown",
    "TooLarge",
    "InvalidAddress",
    "InvalidKey",
    "ProtocolError",
]
