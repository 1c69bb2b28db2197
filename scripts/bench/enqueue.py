"""Phase 2: POST of a sync under load, against pgbench running the same transaction."""

from __future__ import annotations

from common import *  # noqa: F403 (the bench's shared names)


class Enqueue:
    def bench_enqueue(self) -> None:
        log(f"2. enqueue: creating {ENQ_REPOS} repositories")
        assert self.api
        gw = self.start_gateway()
        names = [f"enq-{i:04d}" for i in range(ENQ_REPOS)]
        repos = parallel(lambda n: self.create_repo(n, "small"), names)
        paths = os.path.join(self.work, "enqueue.paths")
        with open(paths, "w") as f:
            for n in names:
                f.write(f"/v1/{ORG}/{n}/upstream/syncs\n")
        psql("CREATE TABLE bench_repo_ids (n int PRIMARY KEY, id text NOT NULL)")
        psql("INSERT INTO bench_repo_ids VALUES " + ",".join(f"({i + 1}, '{r['id']}')" for i, r in enumerate(repos)))
        script = os.path.join(self.work, "enqueue.sql")
        with open(script, "w") as f:
            # The write a POST must make durable: sync row + outbox row in
            # one transaction. Kept as the baseline while the gateway's own
            # statement changed (now one statement, crates/store/src/syncs.rs
            # `create_queued`), so its ratio compares from run to run.
            f.write(
                f"\\set r random(1, {ENQ_REPOS})\n"
                "SELECT id AS repo_id FROM bench_repo_ids WHERE n = :r \\gset\n"
                "BEGIN;\n"
                "INSERT INTO syncs AS s (id, repo_id, direction, branches_glob, tags_glob) "
                "VALUES ('sync_' || md5(random()::text), :repo_id, 'pull', md5(random()::text), '') "
                "ON CONFLICT (repo_id, direction, branches_glob, tags_glob) WHERE status = 'queued' AND attempt = 0 "
                "DO NOTHING RETURNING s.id AS sid \\gset\n"
                "INSERT INTO outbox (sync_id, payload) VALUES (:sid, '\\x0a00'::bytea) RETURNING id;\n"
                "COMMIT;\n")
        lua = os.path.join(HERE, "enqueue.lua")
        wrk(lua, paths, self.key, 2, {"BENCH_RUN": "warm"})
        g, b = [], []
        for r in range(ROUNDS):
            g.append(wrk(lua, paths, self.key, SECONDS, {"BENCH_RUN": f"r{r}"}))
            b.append(pgbench([script], CONNS, SECONDS, f"enq{r}", self.work))
        self.report_load("2. POST sync (enqueue; background publisher, confirms on)", g, b,
                         "pgbench: the same INSERT transaction (sync + outbox)")
        # Below the pool size (16): the per-request cost apart from pool
        # waits (see docs/benchmarks.md).
        low = 8
        gl = [wrk(lua, paths, self.key, SECONDS, {"BENCH_RUN": "low"}, conns=low)]
        bl = [pgbench([script], low, SECONDS, "enqlow", self.work)]
        self.report_load("2'. POST sync (enqueue)", gl, bl,
                         "pgbench: the same INSERT transaction (sync + outbox)", conns=low)
        self.log_summary(gw, "enqueue")
        unpublished = int(psql("SELECT count(*) FROM outbox o JOIN syncs s ON s.id = o.sync_id "
                               "WHERE o.published_at IS NULL AND s.branches_glob LIKE 'bench-%'"))
        if unpublished:
            self.notes.append(f"enqueue: {unpublished} outbox rows of gateway requests were left unpublished "
                              "(publish failed or timed out; the relay would repair them)")
        self.stop_gateway()
        psql("DROP TABLE bench_repo_ids")
        self.quiesce_queued()

    # ------------------------------------------- 3/4. large pull and push
