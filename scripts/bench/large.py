"""Phase 3/4/8: the large repository: first pull (3a), no-op re-syncs (3b, 3c, also alone as `noop`), pushes (4,
4'), and incremental pulls and pushes of 10 commits on one branch (8a, 8b) with both ref counts."""

from __future__ import annotations

from common import *  # noqa: F403 (the bench's shared names)


class Large:
    def bench_large(self) -> None:
        log("3. large pull: baseline git clone --mirror")
        assert self.api
        base = os.path.join(self.work, "baseline")
        os.makedirs(base)
        mirror = os.path.join(base, "large-mirror.git")
        t_clone, rss_clone = timed_rss(["git", "clone", "--mirror", "--quiet", self.url("large"), mirror])
        self.start_gateway()
        # Same history, 1,001 refs: the transfer cost apart from the ref count.
        medium_mirror = os.path.join(base, "medium-mirror.git")
        t_mclone, rss_mclone = timed_rss(["git", "clone", "--mirror", "--quiet", self.url("medium"), medium_mirror])
        self.large_repos = {"medium": self.create_repo("medium", "medium")}
        # One attempt: a failing run is reported as such instead of being
        # retried with backoff for minutes.
        [w] = self.start_workers(1, DEPOT__WORKER__MAX_ATTEMPTS="1")
        idle_rss = w.status_kb("VmRSS")
        log(f"3. pull of the same history with {MEDIUM_REFS} refs")
        t_m, s = self.timed_sync("medium", "pull", LARGE_LIMIT)
        mpeak = w.status_kb("VmHWM")
        if self.sync_row(f"3a'. pull sync, same history with {MEDIUM_REFS} refs, POST to completed", t_m, s,
                         "git clone --mirror of it, same server", t_mclone):
            self.row(f"6a. worker peak RSS during the pull of {COMMITS} commits, {MEDIUM_REFS} refs",
                     f"{mpeak / 1024:.1f} MiB", "git clone --mirror of it: peak RSS (largest process)",
                     f"{rss_mclone / 1024:.1f} MiB", mpeak / rss_mclone, "lower")
        self.stop_workers()
        [w] = self.start_workers(1, DEPOT__WORKER__MAX_ATTEMPTS="1")
        self.large_pull(mirror, w, t_clone, rss_clone, idle_rss)
        self.noop_resyncs(mirror)
        self.large_push(mirror, medium_mirror)

    def large_pull(self, mirror: str, w: Proc, t_clone: float, rss_clone: int, idle_rss: int) -> None:
        """3a and 6a'/6a'': the pull of the large repository into a fresh
        hosted one, by worker `w`."""
        repo = self.create_repo("large", "large")
        self.large_repos = {**getattr(self, "large_repos", {}), "large": repo}
        log("3. large pull: depot pull sync")
        t_pull, s = self.timed_sync("large", "pull", LARGE_LIMIT)
        peak = w.status_kb("VmHWM")
        figure = f"3a. pull sync, large repo ({COMMITS} commits, {self.large_refs} refs), POST to completed"
        pulled = self.sync_row(figure, t_pull, s, "git clone --mirror, same server", t_clone)
        if pulled:
            outcomes: dict[str, int] = {}
            for r in s["stats"]["refs"]:
                outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
            if outcomes.get("updated", 0) != self.large_refs:
                self.notes.append(f"large pull outcomes: {outcomes} (expected {self.large_refs} updated)")
        else:
            # Give the hosted repository the data the pull should have
            # brought, so that the no-op re-sync and the push are measured.
            org_id = psql(f"SELECT id FROM orgs WHERE slug = '{ORG}'")
            hosted = os.path.join(self.work, "storage", org_id, f"{repo['id']}.git")
            shutil.rmtree(hosted, ignore_errors=True)
            run(["git", "clone", "--mirror", "--quiet", mirror, hosted])
            self.notes.append("the large pull failed: the hosted repository was filled with `git clone --mirror` "
                              "so that 3b, 3c and 4 could run")
        rss_note = "" if pulled else " (the pull FAILED: peak until the failure)"
        self.row(f"6a''. worker peak RSS during the large pull{rss_note}", f"{peak / 1024:.1f} MiB",
                 "git clone --mirror peak RSS (largest process)", f"{rss_clone / 1024:.1f} MiB", peak / rss_clone,
                 "lower")
        self.row(f"6a'. worker peak RSS during the large pull{rss_note}", f"{peak / 1024:.1f} MiB",
                 "a fresh worker's RSS when idle", f"{idle_rss / 1024:.1f} MiB", peak / idle_rss, "lower")

    def noop_resyncs(self, mirror: str) -> None:
        """3b/3c: re-syncs of the large repository with nothing changed."""
        log("3. no-op re-sync vs git ls-remote / git fetch")
        noop = []
        for _ in range(3):
            t, s = self.timed_sync("large", "pull", LARGE_LIMIT)
            noop.append((t, s))
            # Repeat only while cheap: the budget of `make bench` is 15 min.
            if s["status"] != "completed" or sum(x for x, _ in noop) > 20:
                break
        lsr = [timed(["git", "ls-remote", self.url("large")]) for _ in range(3)]
        fetch = [timed(["git", "--git-dir", mirror, "fetch", "--quiet", "origin"]) for _ in range(3)]
        tn = statistics.median(t for t, _ in noop)
        tl, tf = statistics.median(lsr), statistics.median(fetch)
        last = noop[-1][1]
        runs = f"median of {len(noop)}" if len(noop) > 1 else "1 run"
        if self.sync_row(f"3b. no-op re-sync, {self.large_refs} refs, POST to completed ({runs})", tn, last,
                         "git ls-remote, same server", tl):
            self.row(f"3c. no-op re-sync, {self.large_refs} refs", f"{tn:.2f} s",
                     "git fetch into an up-to-date mirror", f"{tf:.2f} s", tn / tf, "lower")

    def large_push(self, mirror: str, medium_mirror: str) -> None:
        assert self.api
        self.noop_resyncs(mirror)

        self.incremental_pull("large", mirror, self.large_refs)
        self.incremental_pull("medium", medium_mirror, MEDIUM_REFS)

        log("4. push sync to an empty upstream vs git push --mirror")
        t_gpush = timed(["git", "--git-dir", mirror, "push", "--mirror", "--quiet", self.url("push-git")])
        self.api.must("PATCH", f"/v1/{ORG}/large", {"upstream": {"url": self.url("push-depot")}})
        t_push, s = self.timed_sync("large", "push", LARGE_LIMIT)
        if self.sync_row("4. push sync of the large repo to an empty upstream, POST to completed", t_push, s,
                         "git push --mirror, same server", t_gpush):
            pushed = count_refs(os.path.join(self.upstream_root, "push-depot.git"))
            if pushed != self.large_refs:
                self.notes.append(f"push: the upstream got {pushed} of {self.large_refs} refs")
        # The same history with 1,001 refs, from the hosted copy the medium
        # pull made (or, if it failed, nothing to compare).
        t_gm = timed(["git", "--git-dir", medium_mirror, "push", "--mirror", "--quiet", self.url("push-git-medium")])
        self.api.must("PATCH", f"/v1/{ORG}/medium", {"upstream": {"url": self.url("push-depot-medium")}})
        t_pm, s = self.timed_sync("medium", "push", LARGE_LIMIT)
        self.sync_row(f"4'. push sync, same history with {MEDIUM_REFS} refs, to an empty upstream", t_pm, s,
                      "git push --mirror of it, same server", t_gm)
        self.incremental_push("large", mirror, "push-git", self.large_refs)
        self.incremental_push("medium", medium_mirror, "push-git-medium", MEDIUM_REFS)
        for p in self.workers:
            self.log_summary(p, "large/medium pull and push")
        self.stop_workers()
        self.stop_gateway()

    def incremental_pull(self, name: str, mirror: str, refs: int) -> None:
        """8a: 10 new commits on main upstream, one pull sync; baseline: `git
        fetch` of the same change into git's mirror, right after."""
        upstream = os.path.join(self.upstream_root, f"{name}.git")
        for k in range(INC_STEP):
            add_commit(upstream, "main", 100_000 + k)
        log(f"8a. incremental pull of {INC_STEP} commits, {refs} refs")
        t, s = self.timed_sync(name, "pull", LARGE_LIMIT)
        t_git = timed(["git", "--git-dir", mirror, "fetch", "--quiet", "origin"])
        if self.sync_row(f"8a. incremental pull of {INC_STEP} commits on one branch, {COMMITS} commits, {refs} refs",
                         t, s, "git fetch of the same change into a mirror, same server", t_git):
            self.check_one_updated(s, f"8a ({refs} refs)")

    def incremental_push(self, name: str, mirror: str, git_target: str, refs: int) -> None:
        """8b: 10 new commits on main of the hosted repository (the same
        commits in git's mirror), one push sync to the upstream the full push
        (4, 4') filled; baseline: `git push` of main from the mirror to the
        upstream its `git push --mirror` filled."""
        hosted = self.hosted_path(self.large_repos[name])
        for k in range(INC_STEP):
            add_commit(hosted, "main", 200_000 + k)
            add_commit(mirror, "main", 200_000 + k)
        log(f"8b. incremental push of {INC_STEP} commits, {refs} refs")
        t, s = self.timed_sync(name, "push", LARGE_LIMIT)
        t_git = timed(["git", "--git-dir", mirror, "push", "--quiet", self.url(git_target), "refs/heads/main"])
        if self.sync_row(f"8b. incremental push of {INC_STEP} commits on one branch, {COMMITS} commits, {refs} refs",
                         t, s, "git push of the same branch from a mirror, same server", t_git):
            self.check_one_updated(s, f"8b ({refs} refs)")

    def check_one_updated(self, sync: dict, what: str) -> None:
        updated = sum(1 for r in (sync.get("stats") or {}).get("refs", []) if r.get("outcome") == "updated")
        if updated != 1:
            self.notes.append(f"{what}: {updated} refs updated, expected 1")

    def bench_noop(self) -> None:
        """3a, 3b, 3c alone (BENCH_ONLY=noop): the large pull, then its no-op
        re-syncs, without the medium repository and the pushes."""
        log("3. large pull: baseline git clone --mirror")
        base = os.path.join(self.work, "baseline")
        os.makedirs(base, exist_ok=True)
        mirror = os.path.join(base, "large-mirror.git")
        t_clone, rss_clone = timed_rss(["git", "clone", "--mirror", "--quiet", self.url("large"), mirror])
        self.start_gateway()
        [w] = self.start_workers(1, DEPOT__WORKER__MAX_ATTEMPTS="1")
        idle_rss = w.status_kb("VmRSS")
        self.large_pull(mirror, w, t_clone, rss_clone, idle_rss)
        self.noop_resyncs(mirror)
        self.stop_workers()
        self.stop_gateway()

    # ------------------------------------------- 7. incremental syncs
