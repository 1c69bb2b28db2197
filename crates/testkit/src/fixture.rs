//! Git fixture helpers built on the `git` CLI.
//!
//! Commits and tags are deterministic: identity and dates come from the
//! environment, dates advance by a per-repository counter, so the same sequence
//! of calls yields the same object ids on every run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

/// Variables that would redirect git to another repository or inject config
/// if inherited from the caller (e.g. when tests run inside a git hook).
const LEAKY_GIT_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_PROTOCOL",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_QUARANTINE_PATH",
];

const BASE_EPOCH: u64 = 1_700_000_000;

/// A `git` command isolated from system/global config and credential
/// prompts, with `init.defaultBranch=main`. Useful for driving the git CLI
/// against [`crate::GitHttpServer`] in tests.
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    for var in LEAKY_GIT_VARS {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_AUTHOR_NAME", "Depot Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@depot.test")
        .env("GIT_COMMITTER_NAME", "Depot Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@depot.test")
        .args(["-c", "init.defaultBranch=main"])
        .args(["-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false"])
        .stdin(Stdio::null());
    cmd
}

fn describe(cmd: &Command) -> String {
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    format!("git {}", args.join(" "))
}

fn run(mut cmd: Command, input: Option<&[u8]>) -> Result<Output> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning `{what}`"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().context("child stdin missing")?;
        // The commands fed here read their whole input before they write
        // much (file contents, tree listings, ref updates, fast-import
        // streams), so this cannot deadlock against stdout.
        stdin
            .write_all(input)
            .with_context(|| format!("writing stdin of `{what}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn stdout_line(out: &Output) -> Result<String> {
    let s = std::str::from_utf8(&out.stdout).context("git output is not UTF-8")?;
    Ok(s.trim().to_owned())
}

fn git_in(dir: &Path) -> Command {
    let mut cmd = git_command();
    cmd.arg("-C").arg(dir);
    cmd
}

/// `git -C <dir> <args>` (a work tree or a bare repository); its standard
/// output, trimmed.
pub fn git_in_dir(dir: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = git_in(dir);
    cmd.args(args);
    stdout_line(&run(cmd, None)?)
}

/// The same with `input` on git's standard input: `fast-import`,
/// `update-ref --stdin` (commands that read all of it and write little).
pub fn git_in_dir_with_input(dir: &Path, args: &[&str], input: &[u8]) -> Result<String> {
    let mut cmd = git_in(dir);
    cmd.args(args);
    stdout_line(&run(cmd, Some(input))?)
}

/// `git init --bare` at `path` (creating it), with `http.receivepack` enabled
/// so pushes work through `git http-backend` regardless of authentication.
pub fn init_bare(path: &Path) -> Result<()> {
    let mut init = git_command();
    init.args(["init", "-q", "--bare"]).arg(path);
    run(init, None)?;
    let mut cfg = git_in(path);
    cfg.args(["config", "http.receivepack", "true"]);
    run(cfg, None)?;
    Ok(())
}

/// A working repository used to author history and push it into a bare repo
/// by path (no HTTP).
#[derive(Debug)]
pub struct WorkRepo {
    path: PathBuf,
    counter: AtomicU64,
}

impl WorkRepo {
    /// `git init` (default branch `main`) at `path`, creating it if needed.
    pub fn new(path: &Path) -> Result<WorkRepo> {
        let path =
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        let mut init = git_command();
        init.args(["init", "-q"]).arg(&path);
        run(init, None)?;
        Ok(WorkRepo {
            path,
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the next counter value and a git command in this repo whose
    /// author/committer dates are derived from it.
    fn dated_git(&self) -> (u64, Command) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let date = format!("{} +0000", BASE_EPOCH + n * 60);
        let mut cmd = git_in(&self.path);
        cmd.env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date);
        (n, cmd)
    }

    fn git(&self) -> Command {
        git_in(&self.path)
    }

    /// Full ref name HEAD points at (even when unborn).
    fn head_branch(&self) -> Result<Option<String>> {
        let mut cmd = self.git();
        cmd.args(["symbolic-ref", "-q", "HEAD"]);
        let out = cmd.output().context("running git symbolic-ref")?;
        if out.status.success() {
            Ok(Some(stdout_line(&out)?))
        } else {
            // Detached HEAD.
            Ok(None)
        }
    }

    fn resolves(&self, rev: &str) -> Result<bool> {
        let mut cmd = self.git();
        cmd.args(["rev-parse", "-q", "--verify", rev])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(cmd.status().context("running git rev-parse")?.success())
    }

    /// Switch the work tree to `branch`: an existing branch is checked out, a
    /// new one starts at the current HEAD, or unborn when there is no HEAD yet.
    fn switch_to(&self, branch: &str) -> Result<()> {
        let full = format!("refs/heads/{branch}");
        if self.head_branch()?.as_deref() == Some(full.as_str()) {
            return Ok(());
        }
        let mut cmd = self.git();
        if self.resolves(&full)? {
            cmd.args(["checkout", "-q", branch, "--"]);
        } else if self.resolves("HEAD")? {
            cmd.args(["checkout", "-q", "-b", branch]);
        } else {
            cmd.args(["symbolic-ref", "HEAD", &full]);
        }
        run(cmd, None)?;
        Ok(())
    }

    /// Commit a new file on `branch` through the work tree (also committing
    /// anything else the caller left in it). Returns the full commit id.
    pub fn commit(&self, branch: &str, message: &str) -> Result<String> {
        self.switch_to(branch)?;
        let (n, mut commit) = self.dated_git();
        let file = self.path.join(format!("f{n}.txt"));
        std::fs::write(&file, format!("{message}\n"))
            .with_context(|| format!("writing {}", file.display()))?;
        let mut add = self.git();
        add.args(["add", "-A"]);
        run(add, None)?;
        commit.args(["commit", "-q", "--allow-empty", "-m", message]);
        run(commit, None)?;
        rev_parse(&self.path, "HEAD")
    }

    /// Create a commit on `branch` whose only parent is `parent` (`None` = a
    /// root commit), adding one new file to the parent's tree. Uses plumbing,
    /// so other branches and (unless `branch` is checked out) the work tree are
    /// untouched. Returns the full commit id.
    pub fn commit_on(&self, branch: &str, parent: Option<&str>, message: &str) -> Result<String> {
        let (n, mut commit_tree) = self.dated_git();

        let mut hash = self.git();
        hash.args(["hash-object", "-w", "--stdin"]);
        let blob = stdout_line(&run(hash, Some(format!("{message}\n").as_bytes()))?)?;

        let parent = match parent {
            Some(p) => Some(rev_parse(&self.path, &format!("{p}^{{commit}}"))?),
            None => None,
        };
        let mut entries = match &parent {
            Some(p) => {
                let mut ls = self.git();
                ls.args(["ls-tree", "-z", p]);
                run(ls, None)?.stdout
            }
            None => Vec::new(),
        };
        entries.extend_from_slice(format!("100644 blob {blob}\tf{n}.txt\0").as_bytes());
        let mut mktree = self.git();
        mktree.args(["mktree", "-z"]);
        let tree = stdout_line(&run(mktree, Some(&entries))?)?;

        commit_tree.args(["commit-tree", &tree, "-m", message]);
        if let Some(p) = &parent {
            commit_tree.args(["-p", p]);
        }
        let id = stdout_line(&run(commit_tree, None)?)?;

        let full = format!("refs/heads/{branch}");
        let checked_out = self.head_branch()?.as_deref() == Some(full.as_str());
        if checked_out && self.resolves("HEAD")? {
            // Moving the checked-out branch behind the index's back would make
            // the next `commit` silently revert this one; `--keep` moves index
            // and work tree along while preserving the caller's local edits.
            let mut reset = self.git();
            reset.args(["reset", "-q", "--keep", &id]);
            run(reset, None)?;
        } else {
            let mut update = self.git();
            update.args(["update-ref", "-m", "commit_on", &full, &id]);
            run(update, None)?;
            if checked_out {
                // Branch was unborn: populate index and work tree from it.
                let mut read = self.git();
                read.args(["read-tree", "-m", "-u", &id]);
                run(read, None)?;
            }
        }
        Ok(id)
    }

    /// Create or move (force) tag `name` at `target` (any revision).
    pub fn tag(&self, name: &str, target: &str, annotated: bool) -> Result<()> {
        let (_, mut cmd) = self.dated_git();
        cmd.args(["tag", "-f"]);
        if annotated {
            cmd.args(["-a", "-m", name]);
        }
        cmd.args([name, target]);
        run(cmd, None)?;
        Ok(())
    }

    /// Force-push all branches, then all tags, into the bare repository at `bare`.
    pub fn push_all_to(&self, bare: &Path) -> Result<()> {
        let bare =
            std::path::absolute(bare).with_context(|| format!("resolving {}", bare.display()))?;
        for what in ["--all", "--tags"] {
            let mut push = self.git();
            push.args(["push", "-q", "--force", what]).arg(&bare);
            run(push, None)?;
        }
        Ok(())
    }
}

/// `git for-each-ref` of `repo` as (full refname, object id) pairs sorted by
/// name; symbolic refs are excluded and annotated tags give the tag object id.
pub fn list_refs(repo: &Path) -> Result<Vec<(String, String)>> {
    let mut cmd = git_in(repo);
    cmd.args([
        "for-each-ref",
        "--format=%(refname)%09%(objectname)%09%(symref)",
    ]);
    let out = run(cmd, None)?;
    let text = String::from_utf8(out.stdout).context("for-each-ref output is not UTF-8")?;
    let mut refs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(name), Some(id), symref) = (parts.next(), parts.next(), parts.next()) else {
            bail!("unexpected for-each-ref line: {line:?}");
        };
        if symref.is_some_and(|s| !s.is_empty()) {
            continue;
        }
        refs.push((name.to_owned(), id.to_owned()));
    }
    refs.sort();
    Ok(refs)
}

/// Branches and tags of a repository, by name. For assertions: a
/// repository git cannot read fails the calling test here, naming it.
#[track_caller]
pub fn refs_of(repo: &Path) -> BTreeMap<String, String> {
    match list_refs(repo) {
        Ok(refs) => refs
            .into_iter()
            .filter(|(n, _)| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
            .collect(),
        Err(e) => panic!("refs of {}: {e:#}", repo.display()),
    }
}

/// Every ref name of a repository, sorted (quarantine and other refs
/// included). For assertions, as [`refs_of`].
#[track_caller]
pub fn all_ref_names(repo: &Path) -> Vec<String> {
    match list_refs(repo) {
        Ok(refs) => refs.into_iter().map(|(n, _)| n).collect(),
        Err(e) => panic!("refs of {}: {e:#}", repo.display()),
    }
}

/// `git push --force <bare> <refspec>...` from a work repository, by path:
/// how tests rewrite upstream history or put refs into a hosted repository
/// (which has no write API).
pub fn force_push(work: &Path, bare: &Path, refspecs: &[&str]) -> Result<()> {
    let mut cmd = git_in(work);
    cmd.args(["push", "-q", "--force"]).arg(bare).args(refspecs);
    run(cmd, None).with_context(|| format!("git push {refspecs:?}"))?;
    Ok(())
}

/// Fetch every branch and tag of `bare` into the work repository (so a
/// work repository can build on what a hosted repository holds).
pub fn fetch_all(work: &Path, bare: &Path) -> Result<()> {
    let mut cmd = git_in(work);
    cmd.args(["fetch", "-q", "--force", "--update-head-ok"])
        .arg(bare)
        .args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]);
    run(cmd, None).context("git fetch")?;
    Ok(())
}

/// Does `repo` hold the object `id` (loose or packed)? A repository git
/// cannot read holds nothing.
pub fn has_object(repo: &Path, id: &str) -> bool {
    git_in(repo)
        .args(["cat-file", "-e", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Full object id that `rev` names in `repo` (tag object for annotated tags;
/// use `"<tag>^{commit}"` to peel).
pub fn rev_parse(repo: &Path, rev: &str) -> Result<String> {
    let mut cmd = git_in(repo);
    cmd.args(["rev-parse", "--verify", rev]);
    stdout_line(&run(cmd, None)?)
}

/// Install an `update` hook in `bare` that refuses updates to the given full
/// ref names, printing "protected by policy", so receive-pack reports
/// `ng <ref> hook declined` for them while other refs in the push land.
pub fn refuse_refs_hook(bare: &Path, refs: &[&str]) -> Result<()> {
    let quoted: Vec<String> = refs
        .iter()
        .map(|r| format!("'{}'", r.replace('\'', r"'\''")))
        .collect();
    let script = format!(
        "#!/bin/sh\n\
         # Installed by depot-testkit: refuse updates to protected refs.\n\
         for r in {}; do\n\
         \tif [ \"$1\" = \"$r\" ]; then\n\
         \t\techo \"protected by policy\" >&2\n\
         \t\texit 1\n\
         \tfi\n\
         done\n\
         exit 0\n",
        quoted.join(" ")
    );
    let hooks = bare.join("hooks");
    std::fs::create_dir_all(&hooks).with_context(|| format!("creating {}", hooks.display()))?;
    let hook = hooks.join("update");
    std::fs::write(&hook, script).with_context(|| format!("writing {}", hook.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", hook.display()))?;
    Ok(())
}
