#!/usr/bin/env python3
"""fastworker's Python client next to the Python original FastWorker and Celery + Redis.

One run measures the same workload on each system, on this machine, one system
after the other: an `add(x, y)` task on a worker with 2 slots,

- blocking: one call at a time from one thread, submit and wait for the result;
- in flight: K calls outstanding at once (64 by default), a new one as each ends;

each phase measured for the same duration after an unmeasured warm-up, every
result checked against x + y (wrong and missing ones are counted, not timed;
the rate counts correct results only). It exits non-zero when fastworker gave
a wrong or missing result or a system could not be measured.
It prints one table (rate, p50, p99 per system and phase) and the ratios of
fastworker's Python client over each other system.

The driver needs only the standard library. Each system's Python side runs in
its own interpreter (`compare.py measure SYSTEM ...`), because the original and
ours are both imported as `fastworker`:

    python3 bench/python/compare.py \\
        --fastworker-python .venv/bin/python --original-python /tmp/venv-original/bin/python \\
        --celery-python /tmp/venv-celery/bin/python \\
        --bin target/release/fastworker --plugin target/release/libexample_tasks.so

`bench/python/compare.sh` creates those environments and runs this.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = ("fastworker", "original", "celery")
LABELS = {
    "fastworker": "fastworker (Python client)",
    "original": "original FastWorker 0.3.0",
    "celery": "Celery + Redis",
}


# --- measuring, inside each system's own interpreter -------------------------


class Phase:
    """The latencies (ns) of the correct results of one phase, and what went wrong."""

    def __init__(self):
        self.latencies = []
        self.wrong = 0
        self.missing = 0
        self.first_problem = None
        self.elapsed = 0.0
        self.lock = threading.Lock()

    def record(self, i, took_ns, result, error):
        with self.lock:
            if error is not None:
                self.missing += 1
                what = f"add({i}, {i}): {type(error).__name__}: {error}"
            elif result != 2 * i:
                self.wrong += 1
                what = f"add({i}, {i}) answered {result!r}"
            else:
                self.latencies.append(took_ns)
                return
            if self.first_problem is None:
                self.first_problem = what

    def as_json(self):
        return {"latencies_ns": self.latencies, "elapsed_s": self.elapsed, "wrong": self.wrong,
                "missing": self.missing, "first_problem": self.first_problem}


class Deadline:
    """Hands out request numbers until a duration has passed."""

    def __init__(self, seconds, first):
        self.end = time.perf_counter() + seconds
        self.next = first
        self.lock = threading.Lock()

    def claim(self):
        with self.lock:
            if time.perf_counter() >= self.end:
                return None
            self.next += 1
            return self.next


def run_sync_lanes(call, lanes, seconds, first):
    """`lanes` threads, each calling `call(i)` one after another until the deadline."""
    phase, deadline = Phase(), Deadline(seconds, first)

    def lane():
        while (i := deadline.claim()) is not None:
            sent = time.perf_counter_ns()
            try:
                result, error = call(i), None
            except Exception as caught:  # every failure of the system counts as missing
                result, error = None, caught
            phase.record(i, time.perf_counter_ns() - sent, result, error)

    started = time.perf_counter()
    if lanes == 1:
        lane()
    else:
        threads = [threading.Thread(target=lane) for _ in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    phase.elapsed = time.perf_counter() - started
    return phase, deadline.next


async def run_async_lanes(call, lanes, seconds, first):
    """`lanes` coroutines on one event loop, each awaiting `call(i)` until the deadline."""
    phase, deadline = Phase(), Deadline(seconds, first)

    async def lane():
        while (i := deadline.claim()) is not None:
            sent = time.perf_counter_ns()
            try:
                result, error = await call(i), None
            except Exception as caught:
                result, error = None, caught
            phase.record(i, time.perf_counter_ns() - sent, result, error)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    phase.elapsed = time.perf_counter() - started
    return phase, deadline.next


def measure_fastworker(args):
    import fastworker  # this repository's client (clients/python)

    client = fastworker.Client(args.address, timeout=10.0)
    call = lambda i: client.call("add", [i, i])  # noqa: E731
    n = 0
    _, n = run_sync_lanes(call, 1, args.warmup, n)
    blocking, n = run_sync_lanes(call, 1, args.seconds, n)

    async def pipelined():
        acall = lambda i: client.call_async("add", [i, i])  # noqa: E731
        _, m = await run_async_lanes(acall, args.in_flight, args.warmup, n)
        return (await run_async_lanes(acall, args.in_flight, args.seconds, m))[0]

    return blocking, asyncio.run(pipelined())


def measure_original(args):
    import logging

    from fastworker import Client  # PyPI fastworker 0.3.0, the Python original
    from fastworker.tasks.models import TaskStatus

    logging.disable(logging.CRITICAL)  # its client logs every failure; they are counted here

    async def run():
        client = Client(discovery_address=args.address, timeout=10, retries=1)
        await client.start()  # discovers the control plane through its bus (sleeps 2 s)
        if not client.workers:
            raise SystemExit("the original's client discovered no control plane")

        async def call(i):
            result = await client.submit_task("add", args=(i, i))
            if result.status != TaskStatus.SUCCESS:
                raise RuntimeError(f"status {result.status.value}: {result.error}")
            return result.result

        try:
            n = 0
            _, n = await run_async_lanes(call, 1, args.warmup, n)
            blocking, n = await run_async_lanes(call, 1, args.seconds, n)
            _, n = await run_async_lanes(call, args.in_flight, args.warmup, n)
            in_flight, n = await run_async_lanes(call, args.in_flight, args.seconds, n)
            return blocking, in_flight
        finally:
            client.stop()

    return asyncio.run(run())


def measure_celery(args):
    os.environ["COMPARE_REDIS_URL"] = args.address
    sys.path.insert(0, HERE)
    from compare_celery_tasks import add

    call = lambda i: add.delay(i, i).get(timeout=10)  # noqa: E731
    n = 0
    _, n = run_sync_lanes(call, 1, args.warmup, n)
    blocking, n = run_sync_lanes(call, 1, args.seconds, n)
    _, n = run_sync_lanes(call, args.in_flight, args.warmup, n)
    in_flight, n = run_sync_lanes(call, args.in_flight, args.seconds, n)
    return blocking, in_flight


def measure(args):
    runner = {"fastworker": measure_fastworker, "original": measure_original,
              "celery": measure_celery}[args.system]
    blocking, in_flight = runner(args)
    print(json.dumps({"blocking": blocking.as_json(), "in_flight": in_flight.as_json()}))
    return 0


# --- the driver --------------------------------------------------------------


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count):
    """`count` consecutive free TCP ports on 127.0.0.1 (the original listens on base..base+5)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(port_free(base + k) for k in range(count)):
            return base
    raise SystemExit(f"compare: found no {count} consecutive free ports")


def wait_for_port(port, process, what, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"compare: {what} exited with {process.returncode} before listening "
                             f"on {port}; see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"compare: {what} did not listen on {port} within {seconds:.0f} s")


class Services:
    """The subprocesses one system needs, stopped (each by its own pid) when done."""

    def __init__(self, logs):
        self.logs = logs
        self.processes = []

    def start(self, name, command, env=None, cwd=None):
        log = open(os.path.join(self.logs, f"{name}.log"), "wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
        self.processes.append((name, process, log))
        return process

    def stop(self):
        for name, process, log in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            log.close()
        self.processes.clear()


def run_measure(python, system, address, args, env=None):
    command = [python, os.path.abspath(__file__), "measure", system, "--address", address,
               "--seconds", str(args.seconds), "--warmup", str(args.warmup),
               "--in-flight", str(args.in_flight)]
    done = subprocess.run(command, stdout=subprocess.PIPE, env=env, timeout=4 * (args.seconds + args.warmup) + 120)
    if done.returncode != 0:
        raise SystemExit(f"compare: measuring {system} exited with {done.returncode}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def with_pythonpath(extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def system_fastworker(args, services):
    port = free_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    process = services.start("fastworker-control-plane", [
        args.bin, "control-plane", "--concurrency", "2", "--task-modules", args.plugin,
        "--no-gui", "--no-discovery", "--base-address", address])
    wait_for_port(port, process, "fastworker's control plane")
    return run_measure(args.fastworker_python, "fastworker", address, args)


def system_original(args, services):
    base = free_ports(8)  # base..base+4 tasks and results, +6 subworkers, +7 discovery
    env = with_pythonpath(HERE)
    cli = os.path.join(os.path.dirname(args.original_python), "fastworker")
    discovery = f"tcp://127.0.0.1:{base + 7}"
    process = services.start("original-control-plane", [
        cli, "control-plane", "--base-address", f"tcp://127.0.0.1:{base}",
        "--discovery-address", discovery, "--subworker-port", str(base + 6),
        "--concurrency", "2", "--no-gui", "--task-modules", "compare_original_tasks"], env=env)
    wait_for_port(base + 2, process, "the original's control plane")
    return run_measure(args.original_python, "original", discovery, args, env=env)


def system_celery(args, services):
    port = free_ports(1)
    process = services.start("redis-server", [
        args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no"])
    wait_for_port(port, process, "redis-server")
    url = f"redis://127.0.0.1:{port}"
    env = with_pythonpath(HERE)
    env["COMPARE_REDIS_URL"] = url
    celery = os.path.join(os.path.dirname(args.celery_python), "celery")
    services.start("celery-worker", [
        celery, "-A", "compare_celery_tasks", "worker", "--concurrency", "2",
        "--pool", args.celery_pool, "--loglevel", "WARNING", "--without-gossip",
        "--without-mingle", "--without-heartbeat", "-n", f"compare-{port}@%h"], env=env)
    # The worker is ready when it answers a ping over the broker.
    ping = [args.celery_python, "-c",
            "import sys; from compare_celery_tasks import app; "
            "sys.exit(0 if app.control.ping(timeout=1.0) else 1)"]
    deadline = time.monotonic() + 60
    while subprocess.run(ping, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        if time.monotonic() > deadline:
            raise SystemExit("compare: the Celery worker did not answer a ping within 60 s")
    return run_measure(args.celery_python, "celery", url, args, env=env)


def percentile(latencies, p):
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1] / 1000.0


def summarize(phase):
    done = len(phase["latencies_ns"])
    return {"done": done, "rate": done / phase["elapsed_s"] if phase["elapsed_s"] > 0 else 0.0,
            "p50": percentile(phase["latencies_ns"], 50), "p99": percentile(phase["latencies_ns"], 99),
            "wrong": phase["wrong"], "missing": phase["missing"], "first_problem": phase["first_problem"]}


def ratio(a, b):
    return f"{a / b:.1f}×" if b > 0 else "n/a"


def report(results, args):
    phases = (("blocking", "blocking"), ("in_flight", f"{args.in_flight} in flight"))
    rows = []
    for system, measured in results.items():
        for key, name in phases:
            s = summarize(measured[key])
            rows.append((system, key, name, s))
    print()
    print(f"add(x, y), worker with 2 slots, {args.seconds:g} s per phase after {args.warmup:g} s warm-up"
          f" (Celery pool: {args.celery_pool})")
    print(f"{'system':<28} {'phase':<13} {'results':>8} {'rate/s':>9} {'p50 µs':>10} {'p99 µs':>10}"
          f" {'wrong':>6} {'missing':>8}")
    for system, _, name, s in rows:
        print(f"{LABELS[system]:<28} {name:<13} {s['done']:>8} {s['rate']:>9.0f} {s['p50']:>10.1f}"
              f" {s['p99']:>10.1f} {s['wrong']:>6} {s['missing']:>8}")
    ours = {key: s for system, key, _, s in rows if system == "fastworker"}
    if ours:
        print()
        print("fastworker's Python client over each (rate: ours / theirs; p50: theirs / ours):")
        for system, key, name, s in rows:
            if system == "fastworker":
                continue
            print(f"  vs {LABELS[system]:<26} {name:<13} rate {ratio(ours[key]['rate'], s['rate']):>8}"
                  f"   p50 {ratio(s['p50'], ours[key]['p50']):>8}")
    problems = [(system, name, s) for system, _, name, s in rows if s["wrong"] or s["missing"]]
    for system, name, s in problems:
        print(f"{LABELS[system]} {name}: {s['wrong']} wrong, {s['missing']} missing; first: "
              f"{s['first_problem']}")
    if args.json:
        print(json.dumps({system: {key: summarize(m[key]) for key, _ in phases}
                          for system, m in results.items()}))
    # Another system's wrong or missing results are a finding of the run, shown above;
    # only fastworker's own make the run fail.
    return 1 if any(system == "fastworker" for system, _, _ in problems) else 0


def drive(args):
    if not 0 < args.seconds <= 60 or not 0 <= args.warmup <= 30 or not 1 <= args.in_flight <= 1024:
        raise SystemExit("compare: --seconds must be in (0, 60], --warmup in [0, 30], "
                         "--in-flight in [1, 1024]")
    chosen = args.only or list(SYSTEMS)
    needed = {"fastworker": [args.fastworker_python, args.bin, args.plugin],
              "original": [args.original_python], "celery": [args.celery_python, args.redis_server]}
    for system in chosen:
        for path in needed[system]:
            if not path or not os.path.exists(path):
                raise SystemExit(f"compare: {system} needs {path!r}, which does not exist "
                                 "(bench/python/compare.sh installs everything)")
    logs = args.logs or tempfile.mkdtemp(prefix="fastworker-compare-")
    os.makedirs(logs, exist_ok=True)
    print(f"logs of the servers: {logs}", file=sys.stderr)
    runners = {"fastworker": system_fastworker, "original": system_original, "celery": system_celery}
    results, failures = {}, []
    for system in chosen:
        services = Services(logs)
        print(f"measuring {LABELS[system]} ...", file=sys.stderr)
        try:
            results[system] = runners[system](args, services)
        except SystemExit as failed:  # one system failing still reports the others
            print(failed, file=sys.stderr)
            failures.append(system)
        finally:
            services.stop()
    status = report(results, args)
    return 1 if failures else status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    m = sub.add_parser("measure", help="measure one system (run by the driver in its interpreter)")
    m.add_argument("system", choices=SYSTEMS)
    m.add_argument("--address", required=True)
    for p in (parser, m):
        p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
        p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
        p.add_argument("--in-flight", type=int, default=64, help="calls outstanding in the second phase")
    parser.add_argument("--only", action="append", choices=SYSTEMS, help="measure only this system")
    parser.add_argument("--fastworker-python", default=".venv/bin/python")
    parser.add_argument("--original-python", default="/tmp/venv-original/bin/python")
    parser.add_argument("--celery-python", default="/tmp/venv-celery/bin/python")
    parser.add_argument("--bin", default="target/release/fastworker")
    parser.add_argument("--plugin", default="target/release/libexample_tasks.so")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--celery-pool", default="threads", choices=("threads", "prefork", "solo"))
    parser.add_argument("--logs", help="folder for the servers' logs (default: a new temporary one)")
    parser.add_argument("--json", action="store_true", help="also print the table as one JSON line")
    args = parser.parse_args()
    if args.mode == "measure":
        return measure(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
