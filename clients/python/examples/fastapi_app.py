"""A FastAPI application that hands work to fastworker.

Run a control plane with the example tasks, then this app:

    fastworker control-plane --task-modules target/debug/libexample_tasks.so
    FASTWORKER_ADDRESS=tcp://127.0.0.1:5555 uvicorn fastapi_app:app

    curl -X POST localhost:8000/add -H 'content-type: application/json' -d '{"x": 2, "y": 3}'
    curl -X POST localhost:8000/tasks/sleep_ms -H 'content-type: application/json' -d '{"args": [500]}'
    curl localhost:8000/tasks/<task_id>

One client serves every request: it is shared, and its async calls never
block the event loop (the waiting happens on fastworker's own threads).
"""

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List, Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import fastworker


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # No I/O happens here: the client connects on its first call.
    app.state.fastworker = fastworker.Client(
        os.environ.get("FASTWORKER_ADDRESS", fastworker.DEFAULT_ADDRESS),
        key=os.environ.get("FASTWORKER_KEY_FILE"),
        timeout=float(os.environ.get("FASTWORKER_TIMEOUT", "30")),
    )
    yield


app = FastAPI(title="fastworker example", lifespan=lifespan)

# What each client error means to an HTTP caller.
STATUS = [
    (fastworker.UnknownTask, 404),
    (fastworker.UnknownTaskId, 404),
    (fastworker.InvalidTaskId, 422),
    (fastworker.BadArguments, 422),
    (fastworker.BadRequest, 422),
    (fastworker.Busy, 503),
    (fastworker.Unreachable, 503),
    (fastworker.NoWorker, 503),
    (fastworker.TimedOut, 504),
]


@app.exception_handler(fastworker.FastworkerError)
async def fastworker_error(request: Request, error: fastworker.FastworkerError) -> JSONResponse:
    status = next((code for kind, code in STATUS if isinstance(error, kind)), 500)
    return JSONResponse(status_code=status, content={"error": type(error).__name__, "message": error.message})


def client(request: Request) -> fastworker.Client:
    shared: fastworker.Client = request.app.state.fastworker
    return shared


class Numbers(BaseModel):
    x: int
    y: int


class Submission(BaseModel):
    args: Union[List[Any], Dict[str, Any]] = []
    priority: Optional[str] = None
    countdown: Optional[float] = None


@app.post("/add")
async def add(numbers: Numbers, request: Request) -> Dict[str, Any]:
    """Runs `add` and answers with its result (submit and wait)."""
    result = await client(request).call_async("add", [numbers.x, numbers.y])
    return {"result": result}


@app.post("/tasks/{task}", status_code=202)
async def submit(task: str, submission: Submission, request: Request) -> Dict[str, str]:
    """Queues any task and answers with its id at once (fire and forget)."""
    task_id = await client(request).delay_async(
        task, submission.args, priority=submission.priority, countdown=submission.countdown
    )
    return {"task_id": task_id}


@app.get("/tasks/{task_id}")
async def status(task_id: str, request: Request) -> Dict[str, Any]:
    """A task's state, and its result or error once it has ended."""
    report = await client(request).status_async(task_id)
    return {
        "task_id": report.task_id,
        "task_name": report.task_name,
        "state": report.state,
        "result": report.result,
        "error": report.error,
    }
