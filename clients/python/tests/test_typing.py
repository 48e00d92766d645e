"""The package as a type checker sees it: `mypy --strict` passes on the
examples (every call, option and exception visible by name), and the
exceptions listed for `from fastworker import *` are exactly the classes."""

import inspect
import subprocess
import sys
from pathlib import Path

import fastworker
from fastworker import errors

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def mypy_strict(path):
    """`mypy --strict` on `path`, from this interpreter's environment."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_strict_passes_on_the_examples():
    run = mypy_strict(EXAMPLES)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_sees_a_misspelt_option_and_a_missing_name(tmp_path):
    wrong = tmp_path / "wrong.py"
    wrong.write_text('import fastworker\nc = fastworker.Client()\nc.call("add", [1], prioritty="x")\nfastworker.NoSuchError\n')
    run = mypy_strict(wrong)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "prioritty" in run.stdout and "NoSuchError" in run.stdout, run.stdout


def test_every_exception_class_is_listed_and_exported():
    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.FastworkerError)
    }
    assert set(errors.__all__) == classes
    for name in classes:
        assert getattr(fastworker, name) is getattr(errors, name)
