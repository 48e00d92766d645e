#!/usr/bin/env bash
# One command for bench/python/compare.py: builds fastworker (release), creates
# one virtual environment per system under bench/python/ (gitignored), installs
# redis-server with apt-get if it is missing, then measures fastworker's Python
# client, the Python original FastWorker (PyPI fastworker 0.3.0) and Celery +
# Redis in one run. Arguments are passed to compare.py (e.g. --seconds 5).
# A benchmark: not part of `cargo test`, scripts/test or CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/bench/python

# fastworker: the binary and example plugin, and the Python client, release builds
# sharing the workspace's target directory.
cargo build --release -p fastworker -p example-tasks
python=${PYTHON:-python3}
if ! [ -x "$here/.venv-fastworker/bin/python" ]; then
    "$python" -m venv "$here/.venv-fastworker"
fi
"$here/.venv-fastworker/bin/python" -m pip install --quiet --disable-pip-version-check maturin==1.16.0
PATH="$here/.venv-fastworker/bin:$PATH" CARGO_TARGET_DIR="$root/target" \
    "$here/.venv-fastworker/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./clients/python

# The original requires Python >= 3.12 and is imported as `fastworker` too: its own venv.
original_python=${ORIGINAL_PYTHON:-}
if [ -z "$original_python" ]; then
    for candidate in python3.13 python3.12 "$(pyenv root 2>/dev/null)"/versions/3.1[23]*/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            original_python=$candidate
            break
        fi
    done
fi
if [ -z "$original_python" ]; then
    echo "compare.sh: the original FastWorker needs Python >= 3.12; set ORIGINAL_PYTHON to one" >&2
    exit 1
fi
if ! [ -x "$here/.venv-original/bin/python" ]; then
    "$original_python" -m venv "$here/.venv-original"
fi
"$here/.venv-original/bin/python" -m pip install --quiet --disable-pip-version-check fastworker==0.3.0

# Celery with Redis as broker and result backend, in its own venv.
if ! [ -x "$here/.venv-celery/bin/python" ]; then
    "$python" -m venv "$here/.venv-celery"
fi
"$here/.venv-celery/bin/python" -m pip install --quiet --disable-pip-version-check \
    celery==5.7.0 redis==8.1.0 packaging
if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (run as a subprocess by compare.py, not as a service)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

exec "$python" "$here/compare.py" \
    --fastworker-python "$here/.venv-fastworker/bin/python" \
    --original-python "$here/.venv-original/bin/python" \
    --celery-python "$here/.venv-celery/bin/python" \
    --bin "$root/target/release/fastworker" --plugin "$root/target/release/libexample_tasks.so" "$@"
