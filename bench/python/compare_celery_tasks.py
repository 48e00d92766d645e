"""The `add` task for Celery with Redis as broker and result backend.

`compare.py` starts `celery -A compare_celery_tasks worker` with this folder
on PYTHONPATH and COMPARE_REDIS_URL set to the redis-server it started. Only
for the comparison benchmark.
"""

import os

from celery import Celery

redis_url = os.environ.get("COMPARE_REDIS_URL", "redis://127.0.0.1:6379")
app = Celery("compare_celery_tasks", broker=f"{redis_url}/0", backend=f"{redis_url}/1")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task
def add(x, y):
    """Add two numbers."""
    return x + y
