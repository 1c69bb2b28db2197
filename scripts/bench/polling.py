"""Phase 1: GET of a sync's status under load, against pgbench running the same primary-key SELECT."""

from __future__ import annotations

from common import *  # noqa: F403 (the bench's shared names)


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
        key_hash = __import__("hashlib").sha256(self.key.encode()).hexdigest()
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
            # the key (crates/store/src/keys.rs `find`), then repo and sync
            # in one statement (crates/store/src/syncs.rs `in_repo`).
            p = os.path.join(sql_dir, f"full{i:03d}.sql")
            with open(p, "w") as f:
                f.write(
                    "SELECT k.id, k.org_id, o.slug, o.name, k.scopes, k.expires_at, k.revoked_at, k.key_hash "
                    f"FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.key_hash = '\\x{key_hash}'::bytea;\n"
                    f"SELECT {cols} FROM repos r LEFT JOIN syncs s ON s.repo_id = r.id AND s.id = '{s['id']}' "
                    f"WHERE r.org_id = '{org_id}' AND r.name = '{n}';\n")
            full.append(p)
        script = os.path.join(HERE, "poll.lua")
        wrk(script, paths, self.key, 2)  # warm-up: connections, caches
        g, b = [], []
        for r in range(ROUNDS):
            g.append(wrk(script, paths, self.key, SECONDS))
            b.append(pgbench(scripts, CONNS, SECONDS, f"poll{r}", self.work))
        bf = pgbench(full, CONNS, SECONDS, "pollfull", self.work)
        peak = gw.status_kb("VmHWM")
        self.log_summary(gw, "polling")
        self.report_load("1. GET sync status", g, b, "pgbench: the same primary-key SELECT")
        gr = statistics.median(x["rps"] for x in g)
        self.row("1c. GET sync status: the gateway's 2 statements per poll, via pgbench", f"{bf['rps']:.0f} tps",
                 "pgbench: the primary-key SELECT alone", f"{statistics.median(x['rps'] for x in b):.0f} tps",
                 bf["rps"] / statistics.median(x["rps"] for x in b), "diagnostic: SQL round trips alone")
        self.row("1d. GET sync status vs pgbench of its 2 statements", f"{gr:.0f} rps",
                 "pgbench: the gateway's 2 statements per poll", f"{bf['rps']:.0f} tps", gr / bf["rps"],
                 "higher (1.0 = HTTP layer free)")
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
