"""Phase 1: GET of a sync's status under load, against pgbench running the same primary-key SELECT."""

from __future__ import annotations

from common import *  # noqa: F403 (the bench's shared names)


def _proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


class CpuShare:
    """CPU used by the gateway, the Postgres backends serving it, the load
    generator (the bench's waited children: wrk) and everything else on the
    machine, between `start` and `stop`."""

    def __init__(self, gateway_pid: int):
        self.gw = gateway_pid
        self.backends = [int(x) for x in psql(
            f"SELECT pid FROM pg_stat_activity WHERE datname = '{DB}' AND pid <> pg_backend_pid() "
            "AND application_name <> 'depot-gateway-listener'").split()]

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.gw0 = _proc_ticks(self.gw)
        self.pg0 = sum(_proc_ticks(p) for p in self.backends)
        self.kid0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.m0 = _machine_ticks()

    def stop(self) -> dict:
        hz = os.sysconf("SC_CLK_TCK")
        m1 = _machine_ticks()
        kid = resource.getrusage(resource.RUSAGE_CHILDREN)
        secs = time.monotonic() - self.t0
        gw = (_proc_ticks(self.gw) - self.gw0) / hz
        pg = (sum(_proc_ticks(p) for p in self.backends) - self.pg0) / hz
        load = (kid.ru_utime + kid.ru_stime) - (self.kid0.ru_utime + self.kid0.ru_stime)
        busy = (m1[0] - self.m0[0]) / hz
        return {"seconds": secs, "gateway": gw, "postgres": pg, "wrk": load,
                "other": max(0.0, busy - gw - pg - load), "idle": max(0.0, (m1[1] - self.m0[1] - (m1[0] - self.m0[0])) / hz)}


class Polling:
    def bench_polling(self) -> None:
        log("1. status polling: creating %d repositories with a sync each" % POLL_SYNCS)
        assert self.api
        gw = self.start_gateway()
        idle_rss = gw.status_kb("VmRSS")
        names = [f"poll-{i:03d}" for i in range(POLL_SYNCS)]
        parallel(lambda n: self.create_repo(n, "small"), names)
        syncs = parallel(lambda n: (n, self.enqueue(n)), names, threads=6)
        paths = os.path.join(self.work, "poll.paths")
        with open(paths, "w") as f:
            for n, s in syncs:
                f.write(f"/v1/{ORG}/{n}/upstream/syncs/{s['id']}\n")
        sql_dir = os.path.join(self.work, "pgbench-poll")
        os.makedirs(sql_dir)
        scripts, full = [], []
        cols = ("s.id, s.repo_id, s.seq, s.direction, s.status, s.attempt, s.branches_glob, s.tags_glob, "
                "s.stats, s.error, s.created_at, s.started_at, s.finished_at")
        # The gateway's own column list (crates/store/src/syncs.rs COLUMNS).
        own_cols = ("s.id, s.repo_id, s.seq, s.direction, s.status, s.attempt, s.branches_glob, s.tags_glob, "
                    "s.stats::text AS stats, s.error, s.created_at, s.started_at, s.finished_at, "
                    "s.last_attempt_error, s.not_before")
        org_id = psql(f"SELECT id FROM orgs WHERE slug = '{ORG}'")
        for i, (n, s) in enumerate(syncs):
            # The least a poll must read: the sync by primary key, one
            # lookup per transaction. Kept as the baseline of row 1 while the
            # gateway's own statements changed, so its ratio stays comparable
            # from run to run.
            p = os.path.join(sql_dir, f"pk{i:03d}.sql")
            with open(p, "w") as f:
                f.write(f"SELECT {cols} FROM syncs s WHERE s.repo_id = '{s['repo_id']}' AND s.id = '{s['id']}';\n")
            scripts.append(p)
            # Everything the gateway sends Postgres for one poll, on its one
            # pooled connection (no liveness check: recycling is `Fast`):
            # repo and sync in one statement (crates/store/src/syncs.rs
            # `in_repo`). The API key is verified from the in-process cache
            # (crates/gateway/src/credential_cache.rs), read again only
            # when its entry is older than `auth.cache_seconds`: checked
            # with `log_statement = all` on a throwaway database
            # (docs/benchmarks.md, issue 14 section).
            p = os.path.join(sql_dir, f"full{i:03d}.sql")
            with open(p, "w") as f:
                f.write(
                    f"SELECT {own_cols} FROM repos r LEFT JOIN syncs s ON s.repo_id = r.id AND s.id = '{s['id']}' "
                    f"WHERE r.org_id = '{org_id}' AND r.name = '{n}';\n")
            full.append(p)
        script = os.path.join(HERE, "poll.lua")
        wrk(script, paths, self.key, 2)  # warm-up: connections, caches
        g, b = [], []
        for r in range(ROUNDS):
            if r == 0:
                cpu = CpuShare(gw.pid)
                cpu.start()
            g.append(wrk(script, paths, self.key, SECONDS))
            if r == 0:
                share = cpu.stop()
            b.append(pgbench(scripts, CONNS, SECONDS, f"poll{r}", self.work))
        bf = pgbench(full, CONNS, SECONDS, "pollfull", self.work)
        peak = gw.status_kb("VmHWM")
        self.log_summary(gw, "polling")
        self.report_load("1. GET sync status", g, b, "pgbench: the same primary-key SELECT")
        gr = statistics.median(x["rps"] for x in g)
        self.row("1c. GET sync status: the gateway's statement per poll, via pgbench", f"{bf['rps']:.0f} tps",
                 "pgbench: the primary-key SELECT alone", f"{statistics.median(x['rps'] for x in b):.0f} tps",
                 bf["rps"] / statistics.median(x["rps"] for x in b), "diagnostic: its SQL alone")
        self.row("1d. GET sync status vs pgbench of its statement", f"{gr:.0f} rps",
                 "pgbench: the gateway's statement per poll", f"{bf['rps']:.0f} tps", gr / bf["rps"],
                 "higher (1.0 = HTTP layer free)")
        per = lambda k: share[k] / max(1, g[0]["requests"]) * 1e6  # noqa: E731 (CPU us per poll)
        pct = lambda k: share[k] / share["seconds"] * 100  # noqa: E731 (of one CPU)
        self.row("1f. GET sync status: CPU per poll, gateway process", f"{per('gateway'):.0f} us",
                 "the Postgres backends serving it", f"{per('postgres'):.0f} us", per("gateway") / max(per("postgres"), 1e-9),
                 f"diagnostic, round 1: gateway {pct('gateway'):.0f} %, postgres {pct('postgres'):.0f} %, "
                 f"wrk {pct('wrk'):.0f} % ({per('wrk'):.0f} us/poll), rest of the machine {pct('other'):.0f} %, "
                 f"idle {pct('idle'):.0f} % (of {os.cpu_count()} CPUs = {os.cpu_count() * 100} %)")
        self.row("6b. gateway peak RSS under polling load", f"{peak / 1024:.1f} MiB",
                 "gateway RSS idle after start", f"{idle_rss / 1024:.1f} MiB", peak / idle_rss, "lower")
        # Same load with per-request info logging off, back to back with a
        # fresh gateway at info: what the log line costs.
        self.stop_gateway()
        pair = {}
        for level in ("warn", "info"):
            self.start_gateway(DEPOT__TELEMETRY__FILTER=level)
            wrk(script, paths, self.key, 2)
            pair[level] = wrk(script, paths, self.key, SECONDS)["rps"]
            self.stop_gateway()
        self.row("1e. GET sync status, telemetry.filter=warn", f"{pair['warn']:.0f} rps",
                 "same, telemetry.filter=info, fresh gateway", f"{pair['info']:.0f} rps",
                 pair["warn"] / pair["info"], "diagnostic: >1 = cost of per-request tracing (span + log line)")
