"""Phase 5: sync throughput as worker processes are added."""

from __future__ import annotations

from common import *  # noqa: F403 (the bench's shared names)


class Scaling:
    def bench_scaling(self) -> None:
        assert self.api
        self.start_gateway()
        results: dict[int, float] = {}
        for n in WORKER_COUNTS:
            log(f"5. scaling: {SMALL_REPOS} small repositories, {n} worker process(es)")
            names = [f"s{n}-{i:04d}" for i in range(SMALL_REPOS)]
            parallel(lambda x: self.create_repo(x, "small"), names)
            ids = parallel(lambda x: self.enqueue(x)["id"], names, threads=6)
            t = time.monotonic()
            self.start_workers(n)
            id_list = ",".join(f"'{i}'" for i in ids)
            wait_until(f"{SMALL_REPOS} syncs with {n} workers",
                       lambda: psql(f"SELECT count(*) FROM syncs WHERE id IN ({id_list}) "
                                    "AND status IN ('completed','failed')") == str(SMALL_REPOS),
                       600, pause=0.25)
            wall = time.monotonic() - t
            span, failed = psql(
                "SELECT extract(epoch FROM max(finished_at) - min(started_at)), "
                f"count(*) FILTER (WHERE status = 'failed') FROM syncs WHERE id IN ({id_list})").split("|")
            if int(failed):
                self.notes.append(f"scaling with {n} workers: {failed} of {SMALL_REPOS} syncs failed")
            results[n] = SMALL_REPOS / float(span)
            log(f"   {results[n]:.1f} syncs/s (first start to last finish {float(span):.1f}s, wall {wall:.1f}s)")
            self.stop_workers()
        base_n = WORKER_COUNTS[0]
        for n in WORKER_COUNTS:
            self.row(f"5. worker scaling: {SMALL_REPOS} small-repo pulls, {n} worker process(es) x {WORKER_CONCURRENCY}",
                     f"{results[n]:.1f} syncs/s", f"{base_n} worker process", f"{results[base_n]:.1f} syncs/s",
                     results[n] / results[base_n], "higher (ideal = process count, capped by 2 cores)")
        # Reference: plain git doing the same unit of work at the same
        # parallelism as one worker process.
        sample = 100
        base = os.path.join(self.work, "clones")
        os.makedirs(base)
        t = time.monotonic()
        parallel(lambda i: run(["git", "clone", "--mirror", "--quiet", self.url("small"), os.path.join(base, f"{i}.git")]),
                 range(sample), threads=WORKER_CONCURRENCY)
        git_rate = sample / (time.monotonic() - t)
        self.row(f"5'. small-repo pulls, 1 worker process x {WORKER_CONCURRENCY}", f"{results[base_n]:.1f} syncs/s",
                 f"git clone --mirror, {WORKER_CONCURRENCY} at a time", f"{git_rate:.1f} clones/s",
                 results[base_n] / git_rate, "higher")
        self.stop_gateway()

    # ------------------------------------------------------------ cleanup
