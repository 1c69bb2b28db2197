"""Shared plumbing of `make bench` (the driver is bench.py): configuration
from the environment, processes, the API client, repository generators, the
core of the Bench object (gateway, workers, rows of the table) and output.

A phase lives in a module of its own (polling.py, enqueue.py, large.py,
incremental.py, scaling.py) as a mixin of `Core`; a new phase is a new
module plus one line in bench.py.
"""


from __future__ import annotations

import base64
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


BIN = os.path.abspath(os.environ.get(
    "BENCH_BIN", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")))
SECONDS = env_int("BENCH_SECONDS", 8)
ROUNDS = env_int("BENCH_ROUNDS", 2)
CONNS = env_int("BENCH_CONNECTIONS", 64)
COMMITS = env_int("BENCH_COMMITS", 20000)
BRANCHES = env_int("BENCH_BRANCHES", 9000)
TAGS = env_int("BENCH_TAGS", 1000)
SMALL_REPOS = env_int("BENCH_SMALL_REPOS", 500)
WORKER_COUNTS = [int(x) for x in os.environ.get("BENCH_WORKERS", "1,2,4").split(",")]
PORT_BASE = env_int("BENCH_PORT_BASE", 18400)
GATEWAY_PORT = PORT_BASE + 80
UPSTREAM_PORT = PORT_BASE + 18
METRICS_PORT = PORT_BASE + 90
LARGE_LIMIT = env_int("BENCH_LARGE_LIMIT", 300)  # seconds one large sync may take
INC_PULLS = env_int("BENCH_INC_PULLS", 300)
INC_PUSHES = env_int("BENCH_INC_PUSHES", 100)
INC_REFS = env_int("BENCH_INC_REFS", 1000)
INC_COMMITS = env_int("BENCH_INC_COMMITS", 2000)
INC_STEP = 10  # commits of one incremental pull or push of the large repository (8a, 8b)
INC_WINDOW = 10  # syncs at each end of the incremental series whose medians are compared
PHASES = ("polling", "enqueue", "waiting", "large", "noop", "incremental", "scaling")
ONLY = os.environ.get("BENCH_ONLY", "polling,enqueue,waiting,large,incremental,scaling").split(",")
# Distinct syncs polled. pgbench gets one script per sync (literal ids: the
# very statement the gateway runs), and with -M prepared every client
# prepares every script once: keep it small so that is amortized.
POLL_SYNCS = 8
MEDIUM_REFS = 1001  # refs of the "medium" repository: the large history, fewer refs
ENQ_REPOS = 1000  # repositories the enqueue load spreads over
WORKER_CONCURRENCY = 4  # the built-in default of worker.concurrency
PG = dict(host="127.0.0.1", port="5432", user="postgres")
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"

T0 = time.monotonic()
SUFFIX = f"{int(time.time())}_{os.getpid()}"
DB = f"depot_bench_{SUFFIX}"
NAMESPACE = f"bench-{SUFFIX}"
ORG = "bench"


def log(msg: str) -> None:
    print(f"bench [{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------- processes

PROCS: list["Proc"] = []


class Proc:
    """A child in its own session, logging to WORK/logs/NAME.log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: str, group: bool = False):
        self.name = name
        # Signal the whole process group (a wrapper such as heaptrack and
        # the program it runs), not just the child.
        self.group = group
        self.logpath = os.path.join(logdir, f"{name}.log")
        self.logfile = open(self.logpath, "wb")
        self.p = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self.logfile,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        PROCS.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def status_kb(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise BenchError(f"{field} missing for {self.name}")

    def log_text(self) -> str:
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, limit: float = 15.0) -> None:
        if self.p.poll() is None:
            try:
                kill = os.killpg if self.group else os.kill
                kill(self.p.pid, signal.SIGTERM)
                self.p.wait(limit)
            except subprocess.TimeoutExpired:
                kill(self.p.pid, signal.SIGKILL)
                self.p.wait()
            except ProcessLookupError:
                pass
        self.logfile.close()
        if self in PROCS:
            PROCS.remove(self)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(what: str, check, limit: float = 60.0, proc: Proc | None = None, pause=0.05):
    deadline = time.monotonic() + limit
    while True:
        try:
            v = check()
        except (OSError, http.client.HTTPException):
            v = None
        if v:
            return v
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited while waiting for {what}:\n{proc.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {limit:.0f}s waiting for {what}")
        time.sleep(pause)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.run(argv, **kw)
    except subprocess.CalledProcessError as e:
        out = (e.stdout or b"") + (e.stderr or b"") if isinstance(e.stdout, bytes) else f"{e.stdout or ''}{e.stderr or ''}"
        raise BenchError(f"{' '.join(argv[:4])}... failed ({e.returncode}): {str(out)[-2000:]}") from None


def timed(argv: list[str], **kw) -> float:
    t = time.monotonic()
    run(argv, stdout=subprocess.DEVNULL, **kw)
    return time.monotonic() - t


def timed_rss(argv: list[str], cwd: str | None = None) -> tuple[float, int]:
    """Wall time and peak RSS (KiB, largest process of the tree) of a command,
    measured by a fresh python wrapper so that earlier children do not count."""
    wrapper = (
        "import resource,subprocess,sys,time;t=time.monotonic();"
        "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
        "print(time.monotonic()-t,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,r.returncode)"
    )
    out = run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, cwd=cwd).stdout.split()
    if out[2] != "0":
        raise BenchError(f"{' '.join(argv)} exited {out[2]}")
    return float(out[0]), int(out[1])


# ---------------------------------------------------------------- postgres


def psql(sql: str, db: str = DB) -> str:
    return run(
        ["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db,
         "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True, text=True,
    ).stdout.strip()


def free_pg_connections() -> int:
    out = psql(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_stat_activity)", db="postgres")
    return int(out)


def pgbench(scripts: list[str], clients: int, seconds: int, tag: str, work: str) -> dict:
    """Run pgbench (prepared statements) and return tps and latency
    percentiles from its per-transaction log, plus its "latency average"
    (clients / tps, exact). On an idle machine the log is not: pgbench
    times a transaction with a clock reading taken before it waits for the
    answer, so fast answers are logged as 0 us (seen even with one thread
    per client)."""
    logdir = os.path.join(work, "pgbench", tag)
    os.makedirs(logdir, exist_ok=True)
    # Other processes share the server: do not fail on max_connections.
    free = free_pg_connections()
    if free < clients + 2:
        log(f"pgbench: only {free} free Postgres connections; waiting up to 30 s")
        try:
            wait_until("free Postgres connections", lambda: free_pg_connections() >= clients + 2, 30, pause=1)
        except BenchError:
            clients = max(2, free_pg_connections() - 2)
            log(f"pgbench: running with {clients} clients instead")
    argv = ["pgbench", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-n", "-M", "prepared",
            "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds), "-l",
            "--log-prefix", os.path.join(logdir, "tx")]
    for s in scripts:
        argv += ["-f", s]
    argv.append(DB)
    out = run(argv, capture_output=True, text=True).stdout
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not m:
        raise BenchError(f"pgbench printed no tps:\n{out}")
    lat = []
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
        os.remove(os.path.join(logdir, name))
    lat.sort()
    failed = re.search(r"number of failed transactions: (\d+)", out)
    result = {
        "rps": float(m.group(1)),
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else float("nan"),
        "clients": clients,
        "errors": int(failed.group(1)) if failed else 0,
    }
    mean = re.search(r"latency average = ([0-9.]+) ms", out)
    result["mean_ms"] = float(mean.group(1)) if mean else float("nan")
    return result


# --------------------------------------------------------------------- wrk

WRK_OUTPUTS: list[str] = []


def wrk(script: str, paths_file: str, key: str, seconds: int, extra_env: dict | None = None,
        conns: int = CONNS) -> dict:
    env = dict(os.environ, BENCH_PATHS=paths_file, BENCH_KEY=key, **(extra_env or {}))
    out = run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script,
         f"http://127.0.0.1:{GATEWAY_PORT}"],
        capture_output=True, text=True, env=env,
    ).stdout
    WRK_OUTPUTS.append(out)
    line = next((l for l in out.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no result:\n{out}")
    r = json.loads(line[len("BENCHJSON "):])
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
    ok = r["requests"] - r["status_errors"]
    return {
        # Only successful answers count as throughput.
        "rps": ok / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000 if r["requests"] else float("nan"),
        "p99_ms": r["p99_us"] / 1000 if r["requests"] else float("nan"),
        "errors": errors,
        "requests": r["requests"],
    }


# --------------------------------------------------------------------- api


class Api:
    """One keep-alive connection per thread."""

    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.local = threading.local()

    def call(self, method: str, path: str, body=None) -> tuple[int, object]:
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            headers = {"Authorization": f"Bearer {self.key}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, path, body=data, headers=headers)
                res = conn.getresponse()
                raw = res.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            return res.status, (json.loads(raw) if raw else None)
        raise AssertionError("unreachable")

    def must(self, method: str, path: str, body=None, want=(200, 201)) -> dict:
        status, out = self.call(method, path, body)
        if status not in want:
            raise BenchError(f"{method} {path}: {status} {out}")
        return out  # type: ignore[return-value]


def parallel(fn, items, threads: int = 16) -> list:
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


# ------------------------------------------------------------------ git data


def init_bare(path: str) -> None:
    run(["git", "init", "-q", "--bare", path])
    run(["git", "--git-dir", path, "config", "http.receivepack", "true"])


def gen_large_repo(path: str) -> None:
    """COMMITS commits on main (each changes one of 200 files in 10
    directories), BRANCHES branches and TAGS tags spread over the history,
    written with one `git fast-import` stream."""
    init_bare(path)
    fi = subprocess.Popen(["git", "--git-dir", path, "fast-import", "--quiet", "--done"],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert fi.stdin is not None
    w = fi.stdin.write
    files: dict[int, list[str]] = {}
    ts = 1_600_000_000
    buf: list[bytes] = []

    def data(b: bytes) -> bytes:
        return b"data %d\n%s\n" % (len(b), b)

    for n in range(1, COMMITS + 1):
        f = (n * 7919) % 200
        lines = files.setdefault(f, [])
        lines.append(f"line {n}: the quick brown fox jumps over the lazy dog {n * 31 % 977}")
        if len(lines) > 60:
            del lines[0]
        content = ("\n".join(lines) + "\n").encode()
        msg = f"Change {n}: touch file {f}\n\nGenerated by make bench.\n".encode()
        buf.append(b"commit refs/heads/main\nmark :%d\ncommitter Bench <bench@example.com> %d +0000\n"
                   % (n, ts + n * 60))
        buf.append(data(msg))
        buf.append(b"M 100644 inline dir%d/file%03d.txt\n" % (f % 10, f))
        buf.append(data(content))
        if len(buf) > 4000:
            w(b"".join(buf))
            buf.clear()
    for i in range(BRANCHES):
        mark = 1 + (i * (COMMITS - 1)) // max(1, BRANCHES - 1)
        buf.append(b"reset refs/heads/feature/%05d\nfrom :%d\n\n" % (i, mark))
    for i in range(TAGS):
        mark = 1 + (i * (COMMITS - 1)) // max(1, TAGS - 1)
        if i % 5 == 0:
            buf.append(b"tag rel/%05d\nfrom :%d\ntagger Bench <bench@example.com> %d +0000\n"
                       % (i, mark, ts + mark * 60))
            buf.append(data(b"release %d\n" % i))
        else:
            buf.append(b"reset refs/tags/v%05d\nfrom :%d\n\n" % (i, mark))
    buf.append(b"done\n")
    w(b"".join(buf))
    fi.stdin.close()
    if fi.wait() != 0:
        raise BenchError("git fast-import failed")
    run(["git", "--git-dir", path, "pack-refs", "--all"])


def gen_subset_repo(large: str, path: str, refs: int) -> None:
    """The large repository's history with only its first `refs` refs
    (main, then branches, then 1 in 10 tags): objects shared through
    objects/info/alternates, refs written as one packed-refs file."""
    init_bare(path)
    with open(os.path.join(path, "objects", "info", "alternates"), "w") as f:
        f.write(os.path.join(os.path.abspath(large), "objects") + "\n")
    lines = open(os.path.join(large, "packed-refs")).read().splitlines()
    entries: list[list[str]] = []
    for line in lines:
        if line.startswith("#"):
            continue
        if line.startswith("^"):
            entries[-1].append(line)
        else:
            entries.append([line])
    main = [e for e in entries if e[0].endswith(" refs/heads/main")]
    branches = [e for e in entries if " refs/heads/" in e[0] and e not in main]
    tags = [e for e in entries if " refs/tags/" in e[0]]
    n_tags = min(len(tags), max(0, refs // 10))
    chosen = main + branches[: max(0, refs - 1 - n_tags)] + tags[:n_tags]
    chosen.sort(key=lambda e: e[0].split(" ", 1)[1])
    with open(os.path.join(path, "packed-refs"), "w") as f:
        f.write("# pack-refs with: peeled fully-peeled sorted \n")
        for e in chosen:
            f.write("\n".join(e) + "\n")


def gen_small_repo(path: str, scratch: str) -> None:
    init_bare(path)
    fi = subprocess.Popen(["git", "--git-dir", path, "fast-import", "--quiet", "--done"],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert fi.stdin is not None
    s = []
    for n in range(1, 4):
        body = f"small {n}\n".encode()
        s.append(b"commit refs/heads/main\nmark :%d\ncommitter Bench <b@example.com> %d +0000\ndata 6\nsmall\nM 100644 inline README\ndata %d\n%s\n"
                 % (n, 1_600_000_000 + n, len(body), body))
    s.append(b"reset refs/tags/v1\nfrom :2\n\ndone\n")
    fi.stdin.write(b"".join(s))
    fi.stdin.close()
    if fi.wait() != 0:
        raise BenchError("git fast-import failed (small)")


def gen_inc_repo(path: str) -> None:
    """INC_COMMITS commits on main and INC_REFS - 1 branches spread over
    them, refs packed: the 1,000-ref repository of the incremental series."""
    init_bare(path)
    fi = subprocess.Popen(["git", "--git-dir", path, "fast-import", "--quiet", "--done"],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert fi.stdin is not None
    buf: list[bytes] = []
    for n in range(1, INC_COMMITS + 1):
        body = f"revision {n}\n".encode()
        msg = f"Change {n}\n".encode()
        buf.append(b"commit refs/heads/main\nmark :%d\ncommitter Bench <bench@example.com> %d +0000\n"
                   b"data %d\n%s\nM 100644 inline dir%d/file%02d.txt\ndata %d\n%s\n"
                   % (n, 1_600_000_000 + n * 60, len(msg), msg, n % 10, n % 50, len(body), body))
    branches = max(0, INC_REFS - 1)
    for i in range(branches):
        mark = 1 + (i * (INC_COMMITS - 1)) // max(1, branches - 1)
        buf.append(b"reset refs/heads/feature/%05d\nfrom :%d\n\n" % (i, mark))
    buf.append(b"done\n")
    fi.stdin.write(b"".join(buf))
    fi.stdin.close()
    if fi.wait() != 0:
        raise BenchError("git fast-import failed (incremental)")
    run(["git", "--git-dir", path, "pack-refs", "--all"])


def add_commit(git_dir: str, branch: str, n: int) -> str:
    """One new commit on `branch` changing one file, written with plumbing
    as loose objects (a fast-import per commit would add a pack per commit
    to the repository and slow down its side of the series). Deterministic:
    the same (branch tip, n) gives the same commit id in any repository."""
    g = ["git", "--git-dir", git_dir]
    env = dict(os.environ, GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@example.com",
               GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@example.com",
               GIT_AUTHOR_DATE=f"{1_700_000_000 + n} +0000", GIT_COMMITTER_DATE=f"{1_700_000_000 + n} +0000")
    ref = f"refs/heads/{branch}"
    parent = run(g + ["rev-parse", ref], capture_output=True, text=True).stdout.strip()
    blob = run(g + ["hash-object", "-w", "--stdin"], input=f"incremental change {n}\n", stdin=None,
               capture_output=True, text=True).stdout.strip()
    listing = run(g + ["ls-tree", f"{parent}^{{tree}}"], capture_output=True, text=True).stdout.splitlines()
    listing = [l for l in listing if not l.endswith("\tincremental.txt")]
    listing.append(f"100644 blob {blob}\tincremental.txt")
    tree = run(g + ["mktree"], input="\n".join(listing) + "\n", stdin=None, capture_output=True,
               text=True).stdout.strip()
    commit = run(g + ["commit-tree", tree, "-p", parent, "-m", f"incremental {n}"], env=env,
                 capture_output=True, text=True).stdout.strip()
    run(g + ["update-ref", ref, commit, parent])
    return commit


def repo_shape(git_dir: str) -> dict:
    """Packs, loose refs and loose objects of a bare repository."""
    pack_dir = os.path.join(git_dir, "objects", "pack")
    packs = len([f for f in os.listdir(pack_dir) if f.endswith(".pack")]) if os.path.isdir(pack_dir) else 0
    loose_refs = sum(len(files) for _, _, files in os.walk(os.path.join(git_dir, "refs")))
    loose_objects = 0
    for d in os.listdir(os.path.join(git_dir, "objects")):
        if len(d) == 2:
            loose_objects += len(os.listdir(os.path.join(git_dir, "objects", d)))
    return dict(packs=packs, loose_refs=loose_refs, loose_objects=loose_objects)


def count_refs(git_dir: str) -> int:
    out = run(["git", "--git-dir", git_dir, "for-each-ref", "--format=x", "refs/heads", "refs/tags"],
              capture_output=True, text=True).stdout
    return len(out.splitlines())


# ------------------------------------------------------------------ broker


def broker_cleanup(purge_only: bool = False) -> None:
    """Purge (between phases) or delete (at the end) this run's queues and
    exchanges. Uses pika (scripts/bench.sh installs it); the delay queues
    expire by themselves."""
    try:
        import pika  # type: ignore
    except ImportError:
        log("pika missing: broker objects of namespace %s not cleaned" % NAMESPACE)
        return
    params = pika.URLParameters(AMQP_URL)
    conn = pika.BlockingConnection(params)
    try:
        for q in (f"{NAMESPACE}.sync.jobs", f"{NAMESPACE}.sync.dead"):
            ch = conn.channel()
            try:
                if purge_only:
                    ch.queue_purge(q)
                else:
                    ch.queue_delete(q)
            except Exception:  # noqa: BLE001 - absent queue closes the channel
                pass
        if not purge_only:
            for e in (f"{NAMESPACE}.sync", f"{NAMESPACE}.sync.dlx"):
                ch = conn.channel()
                try:
                    ch.exchange_delete(e)
                except Exception:  # noqa: BLE001
                    pass
    finally:
        conn.close()


# ------------------------------------------------------------------- bench


class Core:
    def __init__(self) -> None:
        self.work = tempfile.mkdtemp(prefix="depot-bench-")
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs)
        self.upstream_root = os.path.join(self.work, "upstream")
        os.makedirs(self.upstream_root)
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.gateway: Proc | None = None
        self.workers: list[Proc] = []
        self.db_created = False
        self.key = ""
        self.api: Api | None = None
        self.credential_key = base64.b64encode(os.urandom(32)).decode()

    # ------------------------------------------------------------ plumbing

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DEPOT") and k not in ("RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT")}
        env.update({
            "DEPOT__DATABASE__URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
            "DEPOT__AMQP__URL": AMQP_URL,
            "DEPOT__AMQP__NAMESPACE": NAMESPACE,
            "DEPOT__GATEWAY__LISTEN": f"127.0.0.1:{GATEWAY_PORT}",
            "DEPOT__STORAGE__ROOT": os.path.join(self.work, "storage"),
            "DEPOT__WORKER__METRICS_LISTEN": f"127.0.0.1:{METRICS_PORT}",
            "DEPOT__UPSTREAM__ALLOWED_SCHEMES": "http,https",
            "DEPOT__UPSTREAM__ALLOW_PRIVATE_NETWORKS": "true",
            "DEPOT__SECRETS__CREDENTIAL_KEY": self.credential_key,
            "DEPOT__TELEMETRY__FORMAT": "json",
            "DEPOT__TELEMETRY__FILTER": "info",
        })
        env.update(extra)
        return env

    def bin(self, name: str) -> str:
        path = os.path.join(BIN, name)
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} missing: build with `cargo build --release --bins`")
        return path

    def admin(self, *args: str) -> str:
        # Setup only (never measured): a debug build serves when the release
        # one is missing.
        admin = os.path.join(BIN, "depot-admin")
        if not os.access(admin, os.X_OK):
            admin = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                 "debug", "depot-admin")
        if not os.access(admin, os.X_OK):
            admin = self.bin("depot-admin")
        return run([admin, *args], env=self.env(), capture_output=True, text=True).stdout

    def start_gateway(self, **extra: str) -> Proc:
        self.gateway_starts = getattr(self, "gateway_starts", 0) + 1
        p = Proc(f"gateway-{self.gateway_starts}", [self.bin("depot-gateway")], self.env(**extra), self.logs)
        self.gateway = p

        def ready():
            c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=2)
            try:
                c.request("GET", "/readyz")
                return c.getresponse().status == 200
            finally:
                c.close()

        wait_until("gateway /readyz", ready, 60, p)
        return p

    def stop_gateway(self) -> None:
        if self.gateway:
            t = time.monotonic()
            self.gateway.stop()
            if time.monotonic() - t > 2:
                log(f"   ({self.gateway.name} took {time.monotonic() - t:.1f} s to stop)")
            self.gateway = None

    def start_workers(self, n: int, **extra: str) -> list[Proc]:
        out = []
        for i in range(n):
            self.worker_starts = getattr(self, "worker_starts", 0) + 1
            # BENCH_WORKER_WRAP="heaptrack -o DIR/worker": run each worker
            # under a profiler (its figures are then for reading the profile
            # only: the RSS rows read the wrapper's process).
            wrap = shlex.split(os.environ.get("BENCH_WORKER_WRAP", ""))
            p = Proc(f"worker-{self.worker_starts}", wrap + [self.bin("depot-worker")],
                     self.env(**{"DEPOT__WORKER__METRICS_LISTEN": f"127.0.0.1:{METRICS_PORT + len(self.workers)}",
                                 "DEPOT__WORKER__CONCURRENCY": str(WORKER_CONCURRENCY),
                                 # libgit2's own error text is logged at debug
                                 "DEPOT__TELEMETRY__FILTER": "info,depot_gitsync::error=debug", **extra}),
                     self.logs, group=bool(wrap))
            self.workers.append(p)
            out.append(p)
        for p in out:
            wait_until(f"{p.name} consuming", lambda p=p: '"consuming sync jobs"' in p.log_text(), 60, p)
        return out

    def stop_workers(self) -> None:
        for p in self.workers:
            p.stop()
        self.workers = []

    def row(self, figure: str, value: str, baseline: str, base_value: str, ratio: float | None,
            better: str) -> None:
        self.rows.append(dict(figure=figure, value=value, baseline=baseline, base_value=base_value,
                              ratio=ratio, better=better))
        r = "n/a" if ratio is None else f"{ratio:.3f}"
        log(f"RESULT {figure}: {value} | baseline {baseline}: {base_value} | ratio {r}")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{UPSTREAM_PORT}/{name}.git"

    def create_repo(self, name: str, upstream: str) -> dict:
        assert self.api
        return self.api.must("POST", f"/v1/{ORG}/repos", {"name": name, "upstream": {"url": self.url(upstream)}})

    def enqueue(self, repo: str, direction: str = "pull", globs: dict | None = None) -> dict:
        assert self.api
        body: dict = {"direction": direction}
        if globs:
            body["ref_globs"] = globs
        return self.api.must("POST", f"/v1/{ORG}/{repo}/upstream/syncs", body, want=(201,))

    def wait_sync(self, repo: str, sync_id: str, limit: float) -> dict:
        """Poll until completed or failed; a sync still running at `limit`
        is returned as it is (status in_progress/queued)."""
        assert self.api
        path = f"/v1/{ORG}/{repo}/upstream/syncs/{sync_id}"
        last: dict = {}

        def done():
            s = self.api.must("GET", path)
            last.update(s)
            return s if s["status"] in ("completed", "failed") else None

        try:
            return wait_until(f"sync {sync_id} of {repo}", done, limit, pause=0.02)
        except BenchError:
            return dict(last, status=f"still {last.get('status')} after {limit:.0f} s")

    def timed_sync(self, repo: str, direction: str, limit: float = 600) -> tuple[float, dict]:
        perf = self.start_perf(f"{repo}-{direction}")
        try:
            t = time.monotonic()
            s = self.enqueue(repo, direction)
            s = self.wait_sync(repo, s["id"], limit)
            return time.monotonic() - t, s
        finally:
            self.stop_perf(perf)

    def start_perf(self, label: str) -> subprocess.Popen | None:
        """With BENCH_PERF=<dir>: a system-wide `perf record` (call graphs
        by frame pointer) around one timed sync, so the worker, the git
        processes it starts, Postgres and the upstream are all in it. A
        profiled run is slower: its times are for reading the profile only."""
        out = os.environ.get("BENCH_PERF")
        if not out:
            return None
        os.makedirs(out, exist_ok=True)
        self.perf_runs = getattr(self, "perf_runs", 0) + 1
        path = os.path.join(out, f"{self.perf_runs:02d}-{label}.data")
        p = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", path, "--quiet"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attaches to every CPU before the sync starts
        log(f"   perf: recording {path}")
        return p

    @staticmethod
    def stop_perf(p: subprocess.Popen | None) -> None:
        if p is not None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def sync_row(self, figure: str, elapsed: float, sync: dict, baseline: str, base: float) -> bool:
        if sync["status"] == "completed":
            self.row(figure, f"{elapsed:.2f} s", baseline, f"{base:.2f} s", elapsed / base, "lower")
            return True
        why = sync.get("error") or sync["status"]
        self.row(figure, f"FAILED after {elapsed:.1f} s ({why})", baseline, f"{base:.2f} s", None, "lower")
        self.notes.append(f"{figure}: the sync ended `{sync['status']}` with error `{why}` "
                          f"after {elapsed:.1f} s (attempt {sync.get('attempt')})")
        return False

    def quiesce_queued(self) -> None:
        """Drop queued syncs left by the load phases (and their messages) so
        that workers started later see only their own work."""
        t = time.monotonic()
        # outbox.sync_id has no index: deleting syncs first would make the
        # ON DELETE CASCADE scan the outbox once per sync (minutes).
        psql("TRUNCATE outbox; DELETE FROM syncs WHERE status = 'queued'")
        broker_cleanup(purge_only=True)
        log(f"   (dropped queued syncs and purged the jobs queue in {time.monotonic() - t:.1f} s)")

    # -------------------------------------------------------------- setup

    def setup(self) -> None:
        for port in [GATEWAY_PORT, UPSTREAM_PORT] + [METRICS_PORT + i for i in range(sum(WORKER_COUNTS) + 2)]:
            if port_open(port):
                raise BenchError(f"port {port} is in use: set BENCH_PORT_BASE to another base")
        log(f"work dir {self.work}, database {DB}, broker namespace {NAMESPACE}")
        t = time.monotonic()
        # The large repository takes a while to generate: only for the
        # phases that use it.
        if "large" in ONLY or "noop" in ONLY:
            gen_large_repo(os.path.join(self.upstream_root, "large.git"))
            gen_subset_repo(os.path.join(self.upstream_root, "large.git"),
                            os.path.join(self.upstream_root, "medium.git"), MEDIUM_REFS)
            self.large_refs = count_refs(os.path.join(self.upstream_root, "large.git"))
            log(f"generated large repository: {COMMITS} commits, {self.large_refs} refs "
                f"({time.monotonic() - t:.1f}s)")
        if "incremental" in ONLY:
            gen_inc_repo(os.path.join(self.upstream_root, "inc.git"))
        gen_small_repo(os.path.join(self.upstream_root, "small.git"), self.work)
        for name in ("push-depot", "push-git", "push-depot-medium", "push-git-medium", "push-inc-depot",
                     "push-inc-git"):
            init_bare(os.path.join(self.upstream_root, f"{name}.git"))
        self.upstream = Proc("upstream", [self.bin("depot-dev-upstream"), "--root", self.upstream_root,
                                          "--listen", f"127.0.0.1:{UPSTREAM_PORT}"], self.env(), self.logs)
        wait_until("git upstream", lambda: port_open(UPSTREAM_PORT), 30, self.upstream)
        self.db_created = True
        out = self.admin("migrate")
        log(f"migrated: {out.strip().splitlines()[-1] if out.strip() else ''}")
        self.admin("org", "create", ORG, "--exists-ok")
        self.key = self.admin("key", "create", "--org", ORG, "--scopes", "read,write").strip().splitlines()[-1]
        self.api = Api(GATEWAY_PORT, self.key)

    # ------------------------------------------------------- 1. polling

    def log_summary(self, proc: Proc, phase: str) -> None:
        """Count the warnings and errors a process logged, by message."""
        counts: dict[str, int] = {}
        for line in proc.log_text().splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            level = str(v.get("level", "")).upper()
            if v.get("target") == "depot_gitsync::error":
                # Its `message` field (libgit2's text) shadows the event's.
                msg = f"libgit2 error: {v.get('message')}"
                counts[msg] = counts.get(msg, 0) + 1
            elif level in ("WARN", "ERROR"):
                msg = f"{level} {v.get('fields', {}).get('message', v.get('message', '?'))}"
                counts[msg] = counts.get(msg, 0) + 1
        for msg, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            self.notes.append(f"{phase}: {proc.name} logged {n} x `{msg}`")

    def report_load(self, title: str, g: list[dict], b: list[dict], baseline: str, conns: int = CONNS) -> None:
        rps = [x["rps"] for x in g]
        tps = [x["rps"] for x in b]
        ratios = [x / y for x, y in zip(rps, tps)]
        gr, br = statistics.median(rps), statistics.median(tps)
        spread = f" (rounds: {', '.join(f'{r:.3f}' for r in ratios)})" if len(ratios) > 1 else ""
        errs = sum(x["errors"] for x in g)
        berrs = sum(x["errors"] for x in b)
        err_note = f", {errs} non-2xx/errors of {sum(x['requests'] for x in g)}" if errs else ""
        b_note = f", {berrs} failed" if berrs else ""
        if b[0].get("clients", conns) != conns:
            b_note += f", {b[0]['clients']} clients"
        self.row(f"{title}: throughput at {conns} connections", f"{gr:.0f} rps{err_note}", baseline,
                 f"{br:.0f} tps{b_note}", statistics.median(ratios), "higher" + spread)
        gp50, bp50 = statistics.median(x["p50_ms"] for x in g), statistics.median(x["p50_ms"] for x in b)
        gp99, bp99 = statistics.median(x["p99_ms"] for x in g), statistics.median(x["p99_ms"] for x in b)
        for pct, gv, bv in (("p50", gp50, bp50), ("p99", gp99, bp99)):
            if bv > 0:
                self.row(f"{title}: {pct} latency at {conns}", f"{gv:.2f} ms", baseline, f"{bv:.2f} ms",
                         gv / bv, "lower")
            elif pct == "p50":
                # pgbench logged most transactions as 0 us (see `pgbench`):
                # compare with its exact mean instead, and say so.
                bm = statistics.median(x["mean_ms"] for x in b)
                self.row(f"{title}: p50 latency at {conns}", f"{gv:.2f} ms",
                         f"{baseline}: latency average (clients / tps; its per-transaction log reads 0 us)",
                         f"{bm:.2f} ms", gv / bm if bm > 0 else None, "lower")
            else:
                self.row(f"{title}: {pct} latency at {conns}", f"{gv:.2f} ms", baseline,
                         "< pgbench's clock tick", None, "lower; n/a: pgbench logged most transactions as 0 us")

    # ------------------------------------------------------- 2. enqueue

    def hosted_path(self, repo: dict) -> str:
        org_id = psql(f"SELECT id FROM orgs WHERE slug = '{ORG}'")
        return os.path.join(self.work, "storage", org_id, f"{repo['id']}.git")

    def series_rows(self, tag: str, what: str, times: list[float], base_times: list[float], base_what: str,
                    shape: dict, shape0: dict) -> None:
        n = len(times)
        if not n:
            return
        k = min(INC_WINDOW, n // 2) or 1
        first, last = statistics.median(times[:k]), statistics.median(times[-k:])
        self.row(f"{tag}. {n} incremental {what} of a {INC_REFS}-ref repository: median of the last {k}",
                 f"{last:.3f} s", f"median of the first {k}", f"{first:.3f} s", last / first,
                 "lower (ideal 1.0: no slowdown)")
        if base_times:
            med, bmed = statistics.median(times), statistics.median(base_times)
            self.row(f"{tag}'. incremental {what}: median of all {n}", f"{med:.3f} s", base_what,
                     f"{bmed:.3f} s", med / bmed, "lower")
        self.row(f"{tag}''. packs in the hosted repository after {n} incremental {what} (housekeeping defaults)",
                 f"{shape['packs']} packs, {shape['loose_refs']} loose refs, {shape['loose_objects']} loose objects",
                 f"before the first of them",
                 f"{shape0['packs']} packs, {shape0['loose_refs']} loose refs, {shape0['loose_objects']} loose objects",
                 None, "lower (bounded: housekeeping.max_packs=8 by default)")

    def cleanup(self) -> None:
        for p in list(PROCS):
            try:
                p.stop(5)
            except Exception:  # noqa: BLE001
                pass
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"BENCH_KEEP=1: keeping {self.work} and database {DB}")
            return
        if self.db_created:
            try:
                psql(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', db="postgres")
            except BenchError as e:
                log(f"could not drop database {DB}: {e}")
            try:
                broker_cleanup()
            except Exception as e:  # noqa: BLE001
                log(f"could not delete broker objects of {NAMESPACE}: {e}")
        # Thousands of small repositories: delete them in the background so
        # that the run returns at once.
        doomed = self.work + ".deleting"
        try:
            os.rename(self.work, doomed)
            subprocess.Popen(["rm", "-rf", doomed], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            shutil.rmtree(self.work, ignore_errors=True)


# ------------------------------------------------------------------ output


def machine_info() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
            mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    git = run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    pg = psql("SHOW server_version", db="postgres")
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}; "
            f"Postgres {pg}; {git}; load average at the end {load}")


def table(rows: list[dict]) -> str:
    head = "| figure | depot | baseline (same run) | baseline value | ratio | better |\n|---|---:|---|---:|---:|---|\n"
    body = ""
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
        body += f"| {r['figure']} | {r['value']} | {r['baseline']} | {r['base_value']} | **{ratio}** | {r['better']} |\n"
    return head + body


def write_doc(md: str) -> None:
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    # A run of some phases only must not replace the full table: it has a
    # block of its own, named after the phases (appended when missing).
    default = os.environ.get("BENCH_ONLY") in (None, "")
    tag = "" if default else ",".join(p for p in PHASES if p in ONLY) + ":"
    begin, end = f"<!-- bench:results:{tag}begin -->", f"<!-- bench:results:{tag}end -->"
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in doc or end not in doc:
        doc += f"\n{begin}\n{end}\n"
    pre, rest = doc.split(begin, 1)
    _, post = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(pre + begin + "\n" + md + end + post)
    log(f"results written to {path}")
