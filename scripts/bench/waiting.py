"""Phase 8: waiting GETs (`Prefer: wait`): how soon a held GET is answered
after the status write commits, and what 10,000 held GETs cost one gateway
(RSS, pool connections)."""

from __future__ import annotations

import asyncio
import resource
import subprocess

from common import *  # noqa: F403 (the bench's shared names)

WAIT_SAMPLES = env_int("BENCH_WAIT_SAMPLES", 40)
WAIT_HELD = env_int("BENCH_WAIT_HELD", 10000)
WAIT_SYNCS = 100  # syncs the held GETs spread over


def waiting_requests() -> int:
    c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=5)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    for line in text.splitlines():
        if line.startswith("depot_gateway_waiting_requests "):
            return int(float(line.split()[1]))
    return 0


def request(path: str, key: str, etag: str, wait: int) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"If-None-Match: {etag}\r\nPrefer: wait={wait}\r\nConnection: close\r\n\r\n").encode()


class Waiting:
    def bench_waiting(self) -> None:
        log(f"8. waiting GETs: {WAIT_SYNCS} queued syncs, no worker")
        assert self.api
        gw = self.start_gateway()
        self.create_repo("wait", "small")
        syncs = [self.enqueue("wait", globs={"branches": f"w{i}*"}) for i in range(WAIT_SYNCS)]
        paths = [f"/v1/{ORG}/wait/upstream/syncs/{s['id']}" for s in syncs]
        tags = []
        for p in paths:
            c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=10)
            c.request("GET", p, headers={"Authorization": f"Bearer {self.key}"})
            r = c.getresponse()
            r.read()
            tags.append(r.getheader("ETag"))
            c.close()
        # The status write: a persistent psql session, so the commit's
        # moment is when psql echoes after the UPDATE (autocommit).
        writer = subprocess.Popen(
            ["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", DB, "-qAtX"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        lat = asyncio.run(self._latencies(syncs, paths, tags, writer))
        writer.stdin.close()
        writer.wait()
        # The writes changed the tags: read them again.
        tags = []
        for p in paths:
            c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=10)
            c.request("GET", p, headers={"Authorization": f"Bearer {self.key}"})
            r = c.getresponse()
            r.read()
            tags.append(r.getheader("ETag"))
            c.close()
        idle_rss = gw.status_kb("VmRSS")
        held, rss, busy = asyncio.run(self._held(paths, tags, gw))
        p50 = statistics.median(lat)
        self.row("8a. waiting GET answered after the status write's commit, p50", f"{p50:.1f} ms",
                 "target", "20 ms", p50 / 20, f"lower (<= 1 meets it); p90 {sorted(lat)[int(len(lat) * 0.9)]:.1f} ms")
        self.row(f"8b. {held:,} waiting GETs held by one gateway: RSS", f"{rss / 1024:.1f} MiB",
                 "target", "200 MiB", rss / 1024 / 200, f"lower (<= 1 meets it); idle {idle_rss / 1024:.1f} MiB")
        self.row(f"8c. database connections busy while {held:,} GETs wait", f"{busy}",
                 "target", "0", None, "0 meets it")
        self.log_summary(gw, "waiting")
        self.stop_gateway()
        self._big_listing()

    def _big_listing(self) -> None:
        """GET /repos?limit=100 of 100 repositories whose latest syncs list
        20,000 refs each (written with SQL: running them would measure git),
        on a fresh gateway: its peak RSS against its idle RSS."""
        log("8d. listing 100 repositories with 20,000-ref syncs")
        # An org of their own: the page must be these 100.
        self.admin("org", "create", "bigorg", "--exists-ok")
        key = self.admin("key", "create", "--org", "bigorg", "--scopes", "read").strip().splitlines()[-1]
        psql(f"""INSERT INTO repos (id, org_id, name)
                   SELECT 'repo_big' || lpad(i::text, 3, '0'), (SELECT id FROM orgs WHERE slug = 'bigorg'),
                          'big' || lpad(i::text, 3, '0') FROM generate_series(1, 100) i;
                 INSERT INTO upstreams (repo_id, url)
                   SELECT id, 'https://example.com/x.git' FROM repos WHERE name LIKE 'big%';
                 WITH st AS (SELECT jsonb_build_object('refs', jsonb_agg(jsonb_build_object(
                          'name', 'refs/heads/b' || lpad(n::text, 5, '0'), 'before', NULL,
                          'after', md5(n::text) || '01234567', 'outcome', 'updated') ORDER BY n)) AS stats
                        FROM generate_series(1, 20000) n)
                 INSERT INTO syncs (id, repo_id, direction, status, attempt, branches_glob, tags_glob,
                                    stats, started_at, finished_at)
                   SELECT 'sync_big' || lpad(substr(r.id, 9), 17, '0'), r.id, 'pull', 'completed', 1,
                          '*', '*', st.stats, now(), now()
                   FROM repos r, st WHERE r.name LIKE 'big%';""")
        gw = self.start_gateway()
        idle = gw.status_kb("VmRSS")
        # The page is read (and dropped) in chunks: the bench must not hold
        # it either.
        t = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=120)
        c.request("GET", "/v1/bigorg/repos?limit=100", headers={"Authorization": f"Bearer {key}"})
        r = c.getresponse()
        if r.status != 200:
            raise BenchError(f"GET /v1/bigorg/repos: {r.status}")
        total = 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        c.close()
        took = time.monotonic() - t
        peak = gw.status_kb("VmHWM")
        self.row("8d. GET /repos?limit=100, latest syncs of 20,000 refs each: gateway peak RSS",
                 f"{peak / 1024:.1f} MiB", "gateway RSS idle after start", f"{idle / 1024:.1f} MiB", peak / idle,
                 f"lower; page {total / (1 << 20):.0f} MiB in {took:.1f} s")
        self.stop_gateway()
        psql("DELETE FROM syncs WHERE id LIKE 'sync_big%'; DELETE FROM repos WHERE name LIKE 'big%'")

    async def _latencies(self, syncs, paths, tags, writer) -> list[float]:
        out = []
        for i in range(min(WAIT_SAMPLES, len(paths))):
            reader, w = await asyncio.open_connection("127.0.0.1", GATEWAY_PORT)
            w.write(request(paths[i], self.key, tags[i], 30))
            await w.drain()
            deadline = time.monotonic() + 10
            while waiting_requests() < 1:
                if time.monotonic() > deadline:
                    raise BenchError("the gateway did not hold the GET")
                await asyncio.sleep(0.005)
            answer = asyncio.ensure_future(reader.readline())
            writer.stdin.write(f"UPDATE syncs SET attempt = attempt + 1 WHERE id = '{syncs[i]['id']}';\n"
                               "\\echo done\n")
            writer.stdin.flush()
            await asyncio.get_running_loop().run_in_executor(None, writer.stdout.readline)
            committed = time.monotonic()
            line = await asyncio.wait_for(answer, 30)
            answered = time.monotonic()
            if b" 200 " not in line:
                raise BenchError(f"held GET answered {line!r}")
            out.append(max(0.0, answered - committed) * 1000)
            w.close()
        return out

    async def _held(self, paths, tags, gw) -> tuple[int, int, int]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, WAIT_HELD + 1024)), hard))
        log(f"   opening {WAIT_HELD} held GETs (Prefer: wait=60)")
        conns = []
        gate = asyncio.Semaphore(256)

        async def one(i: int):
            async with gate:
                r, w = await asyncio.open_connection("127.0.0.1", GATEWAY_PORT)
                w.write(request(paths[i % len(paths)], self.key, tags[i % len(tags)], 60))
                await w.drain()
                conns.append((r, w))

        await asyncio.gather(*(one(i) for i in range(WAIT_HELD)))
        deadline = time.monotonic() + 40
        held = waiting_requests()
        while held < WAIT_HELD and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            held = waiting_requests()
        rss = gw.status_kb("VmRSS")
        busy = int(psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DB}' "
                        "AND pid <> pg_backend_pid() AND state <> 'idle'"))
        log(f"   {held} held, gateway RSS {rss / 1024:.1f} MiB, {busy} busy database connections")
        for _, w in conns:
            w.close()
        return held, rss, busy
