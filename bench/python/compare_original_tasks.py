"""The `add` task for the Python original FastWorker (PyPI `fastworker` 0.3.0).

Loaded by its control plane with `--task-modules compare_original_tasks`, as
its docs define tasks; `compare.py` puts this folder on PYTHONPATH. Only for
the comparison benchmark: fastworker's own tasks are Rust plugins.
"""

from fastworker import task


@task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y
