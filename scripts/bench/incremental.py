"""Phase 7: incremental pulls and pushes (7a, 7b) of the 1,000-ref repository."""

from __future__ import annotations

from common import *  # noqa: F403 (the bench's shared names)


class Incremental:
    def bench_incremental(self) -> None:
        """7a: INC_PULLS pulls of the 1,000-ref repository, each after one
        new commit on one branch upstream; 7b: INC_PUSHES pushes, each after
        one new commit on one branch of the hosted repository. Housekeeping
        runs with its defaults, as in production. Baselines: the first syncs
        of the same series (no slowdown: ratio 1.0), and git doing the same
        incremental step (`git fetch` into a mirror, `git push` of the
        branch), timed right after each sync."""
        assert self.api
        self.start_gateway()
        [w] = self.start_workers(1, DEPOT__WORKER__MAX_ATTEMPTS="1")
        upstream = os.path.join(self.upstream_root, "inc.git")
        base = os.path.join(self.work, "baseline-inc")
        os.makedirs(base)
        mirror = os.path.join(base, "inc-mirror.git")
        t_clone = timed(["git", "clone", "--mirror", "--quiet", self.url("inc"), mirror])
        repo = self.create_repo("inc", "inc")
        t, s = self.timed_sync("inc", "pull", LARGE_LIMIT)
        if not self.sync_row(f"7. first pull of the {INC_REFS}-ref repository ({INC_COMMITS} commits)", t, s,
                             "git clone --mirror, same server", t_clone):
            raise BenchError("the first pull of the incremental repository failed")
        hosted = self.hosted_path(repo)
        branches = max(1, INC_REFS - 1)
        branch = (lambda i: f"feature/{i % branches:05d}") if INC_REFS > 1 else (lambda i: "main")

        log(f"7a. {INC_PULLS} incremental pulls")
        shape0 = repo_shape(hosted)
        times, git_times, failed = [], [], 0
        for i in range(INC_PULLS):
            add_commit(upstream, branch(i), i)
            t, s = self.timed_sync("inc", "pull", LARGE_LIMIT)
            updated = sum(1 for r in (s.get("stats") or {}).get("refs", []) if r.get("outcome") == "updated")
            if s["status"] != "completed" or updated != 1:
                failed += 1
                if failed <= 3:
                    self.notes.append(f"incremental pull {i + 1}: status {s['status']}, {updated} refs updated, "
                                      f"error {s.get('error')}")
            times.append(t)
            git_times.append(timed(["git", "--git-dir", mirror, "fetch", "--quiet", "origin"]))
            if (i + 1) % 50 == 0:
                log(f"   {i + 1} pulls, last {t:.3f} s, {repo_shape(hosted)}")
        if failed:
            self.notes.append(f"7a: {failed} of {INC_PULLS} incremental pulls did not update exactly one ref")
        self.series_rows("7a", "pulls", times, git_times,
                         "git fetch of the same change into a mirror (git's auto gc on), same server",
                         repo_shape(hosted), shape0)

        log(f"7b. {INC_PUSHES} incremental pushes")
        self.api.must("PATCH", f"/v1/{ORG}/inc", {"upstream": {"url": self.url("push-inc-depot")}})
        t, s = self.timed_sync("inc", "push", LARGE_LIMIT)
        if not self.sync_row(f"7. first push of the {INC_REFS}-ref repository to an empty upstream", t, s,
                             "git push --mirror of it, same server",
                             timed(["git", "--git-dir", mirror, "push", "--mirror", "--quiet",
                                    self.url("push-inc-git")])):
            raise BenchError("the first push of the incremental repository failed")
        shape0 = repo_shape(hosted)
        times, git_times, failed = [], [], 0
        for i in range(INC_PUSHES):
            # The same commit (same id) in the hosted repository, as a local
            # writer would make it, and in git's mirror.
            n = INC_PULLS + i
            add_commit(hosted, branch(n), n)
            add_commit(mirror, branch(n), n)
            t, s = self.timed_sync("inc", "push", LARGE_LIMIT)
            updated = sum(1 for r in (s.get("stats") or {}).get("refs", []) if r.get("outcome") == "updated")
            if s["status"] != "completed" or updated != 1:
                failed += 1
                if failed <= 3:
                    self.notes.append(f"incremental push {i + 1}: status {s['status']}, {updated} refs updated, "
                                      f"error {s.get('error')}")
            times.append(t)
            git_times.append(timed(["git", "--git-dir", mirror, "push", "--quiet", self.url("push-inc-git"),
                                    f"refs/heads/{branch(n)}"]))
            if (i + 1) % 50 == 0:
                log(f"   {i + 1} pushes, last {t:.3f} s, {repo_shape(hosted)}")
        if failed:
            self.notes.append(f"7b: {failed} of {INC_PUSHES} incremental pushes did not update exactly one ref")
        self.series_rows("7b", "pushes", times, git_times, "git push of the same branch from a mirror, same server",
                         repo_shape(hosted), shape0)
        self.log_summary(w, "incremental pulls and pushes")
        self.stop_workers()
        self.stop_gateway()

    # ------------------------------------------------ 5. worker scaling
