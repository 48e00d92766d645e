#!/usr/bin/env python3
"""How fast the Python client is: `add` calls against a running control plane.

Two phases, each after an unmeasured warm-up of 0.3 s, every reply checked:

- blocking: `client.call("add", [i, i])` one after another from one thread;
- pipelined: K calls in flight at once from asyncio (`call_async`), one client.

    python bench/python/client_bench.py --address tcp://127.0.0.1:5555 [--seconds 2] [--in-flight 64]

It prints each phase's replies, rate and latency percentiles; with --json it
also prints one JSON line with every latency, which `fastworker-bench
--python PATH` reads to set these rows beside the Rust client's of the same run.
"""

import argparse
import asyncio
import json
import sys
import time

import fastworker

WARMUP = 0.3


class Phase:
    """The latencies (ns) of the correct replies, and what went wrong."""

    def __init__(self):
        self.latencies = []
        self.wrong = 0
        self.missing = 0
        self.first_problem = None
        self.elapsed = 0.0

    def problem(self, wrong, what):
        if wrong:
            self.wrong += 1
        else:
            self.missing += 1
        if self.first_problem is None:
            self.first_problem = what

    def percentile(self, p):
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
        return ordered[int(rank) - 1] / 1000.0

    def rate(self):
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self, name):
        return (f"{name:<22} {len(self.latencies):>8} replies {self.rate():>10.0f} req/s  "
                f"p50 {self.percentile(50):>9.1f} µs  p99 {self.percentile(99):>9.1f} µs  "
                f"wrong {self.wrong}  missing {self.missing}")

    def as_json(self):
        return {"latencies_ns": self.latencies, "elapsed_s": self.elapsed, "wrong": self.wrong,
                "missing": self.missing, "first_problem": self.first_problem}


class Budget:
    """A duration, or a number of requests."""

    def __init__(self, seconds, requests):
        self.seconds, self.requests = seconds, requests
        self.started = time.perf_counter()
        self.claimed = 0

    def claim(self):
        """The next request's number, or None when the budget is spent."""
        if self.requests is not None:
            if self.claimed >= self.requests:
                return None
        elif time.perf_counter() - self.started >= self.seconds:
            return None
        self.claimed += 1
        return self.claimed


def blocking(client, budget):
    phase = Phase()
    started = time.perf_counter()
    while (i := budget.claim()) is not None:
        sent = time.perf_counter_ns()
        try:
            result = client.call("add", [i, i])
        except fastworker.FastworkerError as error:
            phase.problem(False, f"add({i}, {i}): {type(error).__name__}: {error}")
            continue
        took = time.perf_counter_ns() - sent
        if result == 2 * i:
            phase.latencies.append(took)
        else:
            phase.problem(True, f"add({i}, {i}) answered {result!r}")
    phase.elapsed = time.perf_counter() - started
    return phase


async def pipelined(client, in_flight, budget):
    phase = Phase()

    async def lane():
        while (i := budget.claim()) is not None:
            sent = time.perf_counter_ns()
            try:
                result = await client.call_async("add", [i, i])
            except fastworker.FastworkerError as error:
                phase.problem(False, f"add({i}, {i}): {type(error).__name__}: {error}")
                continue
            took = time.perf_counter_ns() - sent
            if result == 2 * i:
                phase.latencies.append(took)
            else:
                phase.problem(True, f"add({i}, {i}) answered {result!r}")

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    phase.elapsed = time.perf_counter() - started
    return phase


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=fastworker.DEFAULT_ADDRESS)
    parser.add_argument("--key", help="a key file, when the cluster has a key")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per phase")
    parser.add_argument("--requests", type=int, help="measured requests per phase instead of a duration")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight in the pipelined phase")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every latency")
    args = parser.parse_args()
    if not 0 < args.seconds <= 60 or not 1 <= args.in_flight <= 4096 or (args.requests is not None and args.requests < 1):
        parser.error("--seconds must be in (0, 60], --in-flight in [1, 4096], --requests at least 1")

    client = fastworker.Client(args.address, key=args.key, timeout=5.0)
    blocking(client, Budget(WARMUP, None))
    sequential = blocking(client, Budget(args.seconds, args.requests))

    async def run_pipelined():
        await pipelined(client, args.in_flight, Budget(WARMUP, None))
        return await pipelined(client, args.in_flight, Budget(args.seconds, args.requests))

    concurrent = asyncio.run(run_pipelined())
    out = sys.stderr if args.json else sys.stdout
    print(sequential.summary("python blocking"), file=out)
    print(concurrent.summary(f"python pipelined-{args.in_flight}"), file=out)
    if args.json:
        print(json.dumps({"blocking": sequential.as_json(), "pipelined": concurrent.as_json()}))
    return 0 if sequential.wrong + sequential.missing + concurrent.wrong + concurrent.missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
