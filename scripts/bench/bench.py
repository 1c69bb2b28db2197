#!/usr/bin/env python3
"""`make bench` driver (started by scripts/bench.sh, which installs the tools
and builds the release binaries first).

Starts its own git upstream, gateway and workers against a database and a
broker namespace of its own, measures every figure of issue 7 back to back
with its baseline, prints a table of ratios, writes it into
docs/benchmarks.md, and removes what it created (database, broker queues and
exchanges, temporary directory).

Every figure is a ratio against a baseline measured in the same run on the
same machine: on a shared 2-core box the absolute numbers are noise.

Environment knobs (defaults in brackets):
  BENCH_BIN          directory with the release binaries [target/release]
  BENCH_SECONDS      length of one load run, seconds [8]
  BENCH_ROUNDS       alternating rounds of (depot, baseline) load runs [2]
  BENCH_CONNECTIONS  concurrent connections / pgbench clients [64]
  BENCH_COMMITS      commits of the large repository [20000]
  BENCH_BRANCHES     branches of the large repository [9000]
  BENCH_TAGS         tags of the large repository (1 in 5 annotated) [1000]
  BENCH_SMALL_REPOS  repositories per worker-scaling run [500]
  BENCH_WORKERS      worker process counts to scale over [1,2,4]
  BENCH_LARGE_LIMIT  seconds a large-repository sync may take [300]
  BENCH_PORT_BASE    ports used: BASE+80 gateway, BASE+18 upstream,
                     BASE+90.. worker metrics [18400]
  BENCH_INC_PULLS    incremental pulls of the 1,000-ref repository [300]
  BENCH_INC_PUSHES   incremental pushes of it [100]
  BENCH_INC_REFS     refs of that repository (main + branches) [1000]
  BENCH_INC_COMMITS  commits of its history [2000]
  BENCH_ONLY         comma-separated phases to run:
                     polling,enqueue,waiting,large,incremental,scaling; `noop` runs
                     only the large pull and its no-op re-syncs (3a-3c),
                     without the pushes of `large`
  BENCH_KEEP=1       keep the temporary directory and database
  BENCH_NO_DOC=1     do not rewrite docs/benchmarks.md
  BENCH_PERF=<dir>   system-wide `perf record -g` around each timed sync
                     (large pulls and pushes), one <dir>/NN-<repo>-<dir>.data
                     each; profiled times are not comparable: use with
                     BENCH_NO_DOC=1
  BENCH_WORKER_WRAP  a command prefix for each worker (e.g. "heaptrack -o DIR/worker"):
                     for reading a profile; the worker RSS rows then read the wrapper
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime, timezone

from common import (CONNS, INC_COMMITS, INC_PULLS, INC_PUSHES, INC_REFS, ONLY, PHASES, ROUNDS, SECONDS, T0,
                    WORKER_CONCURRENCY, BenchError, Core, log, machine_info, table, write_doc)
from enqueue import Enqueue
from incremental import Incremental
from large import Large
from polling import Polling
from scaling import Scaling
from waiting import Waiting


class Bench(Core, Polling, Enqueue, Waiting, Large, Incremental, Scaling):
    """Every phase is a `bench_<phase>` method of one of the mixins."""


def main() -> int:
    bench = Bench()
    interrupted = []

    def on_signal(signum, frame):  # noqa: ARG001
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = datetime.now(timezone.utc)
    ok = False
    try:
        bench.setup()
        unknown = [p for p in ONLY if p not in PHASES]
        if unknown:
            raise BenchError(f"BENCH_ONLY: unknown phase(s) {', '.join(unknown)} (known: {', '.join(PHASES)})")
        for phase in PHASES:
            # `large` includes the no-op re-syncs of `noop`.
            if phase in ONLY and not (phase == "noop" and "large" in ONLY):
                getattr(bench, f"bench_{phase}")()
        ok = True
    except BenchError as e:
        log(f"ERROR: {e}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        minutes = (time.monotonic() - T0) / 60
        try:
            info = machine_info()
        except Exception as e:  # noqa: BLE001
            info = f"(machine info unavailable: {e})"
        bench.cleanup()
    md = (f"Run of {started.strftime('%Y-%m-%d %H:%M UTC')}, {minutes:.1f} min of measuring "
          f"({'complete' if ok else 'INCOMPLETE'}); {info}. Settings: {SECONDS} s per load run, {ROUNDS} "
          f"rounds alternating depot and baseline, {CONNS} connections, wrk -t2, pgbench -j2 -M prepared, "
          f"gateway and worker with default pool size and worker.concurrency={WORKER_CONCURRENCY}, "
          f"telemetry json at info."
          + (f" Phases: {','.join(p for p in PHASES if p in ONLY)}." if os.environ.get("BENCH_ONLY") else "")
          + (f" Incremental series: {INC_PULLS} pulls, {INC_PUSHES} pushes, {INC_REFS} refs, {INC_COMMITS} "
             "commits, every housekeeping.* setting at its default." if "incremental" in ONLY else "")
          + "\n\n" + table(bench.rows))
    if bench.notes:
        md += "\nNotes from this run:\n\n" + "".join(f"- {n}\n" for n in bench.notes)
    print()
    print(md)
    if os.environ.get("BENCH_NO_DOC") != "1" and bench.rows:
        write_doc(md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
