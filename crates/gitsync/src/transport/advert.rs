//! A push's receive-pack advertisement, trimmed before libgit2 reads it.
//!
//! What libgit2 (1.9, `src/libgit2/push.c`, `transports/smart*.c`) does
//! with the advertisement of a push:
//! - `git_smart__store_refs` reads pkt-lines until the second flush (smart
//!   HTTP): the first pkt must be the `# service=` comment (dropped), an
//!   `ERR` pkt fails the connection, every other pkt is kept as a head.
//!   Capabilities are read from the first ref pkt only (after its NUL; a
//!   NUL on a later line is a parse error), `object-format=` included; a
//!   lone `capabilities^{}` line with the zero id is an empty repository
//!   and is dropped. Order does not matter anywhere (the post-push
//!   `update_refs_from_report` sorts the heads itself).
//! - `calculate_work`: each push spec's old id is the id of the first head
//!   whose name equals the spec's destination, zero if none (a creation);
//!   it goes into the command line (`<old> <new> <name>`) and into the
//!   `push_negotiation` callback's updates.
//! - `queue_objects`: deletions (zero new id) and up-to-date specs add no
//!   objects; a non-forced update (ours are) needs its old id present
//!   locally and an ancestor of the new value, else libgit2 refuses it
//!   (`non-fastforwardable`) before sending anything. Then **every** head
//!   with a non-zero id is hidden in the revision walk (not-found,
//!   non-commit and peel errors ignored), and the pack builder marks the
//!   trees of the hidden tips uninteresting (reading each tip's whole
//!   tree). That walk is time-sorted and
//!   keeps hidden commits in a date-sorted list, quadratic in the number of
//!   hidden tips: the cost this module removes (docs/benchmarks.md, 8b).
//! - `report-status` and `side-band-64k` are requested on the first command
//!   whatever the server advertised; `push-options` is checked against the
//!   capabilities; `delete-refs` is not looked at. A push of deletions only
//!   sends no pack.
//!
//! So libgit2 needs, of the advertisement: the capabilities line, the
//! exact line of every ref it updates or deletes, and, only to keep the
//! pack small, some tips the remote has; any other line only costs time.
//!
//! Invariants of [`Trimmer`]:
//! - **Lines are passed on byte for byte or not at all**, never rewritten:
//!   pkt-line framing stays exact. Everything up to the first flush (the
//!   service header), the first ref line (capabilities, or the
//!   `capabilities^{}` line of an empty repository), the closing flush and
//!   everything after it, and every pkt that is not a well-formed ref line
//!   go through unchanged, so libgit2 sees and judges the server's errors
//!   and oddities as before.
//! - **Every ref the push may change is shown as advertised**: the first
//!   line of each candidate name whose advertised id differs from its local
//!   value (an update, or a refusal the plan reports). A candidate at its
//!   local value is unchanged and never pushed; a filtered candidate is
//!   never pushed. Later lines of an already seen candidate name are
//!   dropped (libgit2 and the plan both take the first).
//! - **The plan reads what libgit2 reads**: the advertised id of every
//!   candidate name (first line, shown or not) is recorded in the
//!   [`PushIntent`] when the ref list ends, and the plan decides on it; the
//!   push's `push_negotiation` check still compares each update's old id
//!   with the plan's.
//! - **Hide tips, bounded**: for every pushed value (a candidate value the
//!   remote does not have under that name), the first advertised ref at
//!   that same object; else the advertised refs at its nearest ancestors
//!   among the matched local refs' values, found by a walk over parents of at most
//!   [`MAX_WALK`] commits in all, which stops at every commit the remote
//!   is shown to have (an update's old value, shown anyway, ends a linear
//!   push's walk after its new commits). Then at most [`MAX_HIDE_TIPS`]
//!   others at distinct objects, in this order: unchanged candidate
//!   branches, other branches, unchanged candidate tags, everything else.
//!   Fewer hide tips never make a push wrong, only its pack larger.
//! - **Bounded work and memory**: one hash lookup per advertised line, the
//!   walk's [`MAX_WALK`] commit reads once per advertisement; held
//!   lines are at most one per distinct candidate value plus
//!   `4 × MAX_HIDE_TIPS`, each at most [`MAX_HELD_LINE`] bytes; the input
//!   buffer holds at most one pkt-line beyond one read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use git2::{ObjectType, Oid, Repository};

use super::Transfer;

/// Most advertised refs shown to libgit2 besides the pushed refs, those at
/// pushed values and those the ancestor walk found: a fallback for the
/// pack's size only. Kept small because every hidden tip costs libgit2 a
/// read of its whole tree (`mark_edges_uninteresting`): 256 of them took
/// about 0.25 s more than 16 in the 10,001-ref push of docs/benchmarks.md
/// (8b).
pub(crate) const MAX_HIDE_TIPS: usize = 32;
/// Most commits the search for shown ancestors of the pushed values reads.
pub(crate) const MAX_WALK: usize = 1024;
/// A line longer than this is never held back for later (a hide tip is not
/// worth a long name's memory).
const MAX_HELD_LINE: usize = 1024;
/// Length prefix of a pkt-line.
const LEN: usize = 4;
/// Hex digits of a SHA-1 object id.
const HEX: usize = 40;

/// What a push tells the transport before it connects, and what the
/// transport tells the plan back.
pub(crate) struct PushIntent {
    /// The hosted repository (read for the ancestors of pushed values).
    repo: PathBuf,
    /// Every matched local ref: name -> its value, `None` if it is never
    /// pushed (filtered).
    refs: HashMap<String, Option<Oid>>,
    /// The distinct values of `refs`.
    values: HashSet<Oid>,
    /// The advertised id of each name in `refs` that the remote has; set
    /// when the advertisement's ref list ended.
    seen: Mutex<Option<HashMap<String, Oid>>>,
}

impl PushIntent {
    pub(crate) fn new(repo: PathBuf, refs: HashMap<String, Option<Oid>>) -> PushIntent {
        let values = refs.values().flatten().copied().collect();
        PushIntent {
            repo,
            refs,
            values,
            seen: Mutex::new(None),
        }
    }

    /// The remote's values of the intent's refs, once a whole advertisement
    /// was read (`None` before, and after the first call).
    pub(crate) fn take_advertised(&self) -> Option<HashMap<String, Oid>> {
        self.seen.lock().ok().and_then(|mut s| s.take())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Up to and with the first flush: the `# service=` header.
    Header,
    /// The ref list, up to its flush.
    Refs,
    /// Everything else: passed on unchanged.
    Done,
}

/// Hide-tip candidates, highest priority first (see the invariants).
const POOLS: usize = 4;

#[derive(Default)]
struct Pool {
    lines: Vec<(Oid, Vec<u8>)>,
    oids: HashSet<Oid>,
}

/// Reads the raw advertisement (`feed`, `end`) and hands libgit2 the
/// trimmed one (`take`).
pub(crate) struct Trimmer {
    intent: Arc<PushIntent>,
    transfer: Arc<Transfer>,
    phase: Phase,
    input: Vec<u8>,
    output: Vec<u8>,
    out_pos: usize,
    seen_first_ref: bool,
    /// Whether the last ref line was shown (a `^{}` line follows its ref).
    last_shown: bool,
    remote: HashMap<String, Oid>,
    shown: HashSet<Oid>,
    same_object: HashMap<Oid, Vec<u8>>,
    pools: [Pool; POOLS],
    refs_in: u64,
    refs_out: u64,
}

impl Trimmer {
    pub(crate) fn new(intent: Arc<PushIntent>, transfer: Arc<Transfer>) -> Trimmer {
        Trimmer {
            intent,
            transfer,
            phase: Phase::Header,
            input: Vec::new(),
            output: Vec::new(),
            out_pos: 0,
            seen_first_ref: false,
            last_shown: false,
            remote: HashMap::new(),
            shown: HashSet::new(),
            same_object: HashMap::new(),
            pools: Default::default(),
            refs_in: 0,
            refs_out: 0,
        }
    }

    /// Copy trimmed bytes into `out`; 0 when none are ready.
    pub(crate) fn take(&mut self, out: &mut [u8]) -> usize {
        let ready = &self.output[self.out_pos..];
        let n = ready.len().min(out.len());
        out[..n].copy_from_slice(&ready[..n]);
        self.out_pos += n;
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        }
        n
    }

    /// Raw advertisement bytes, as they arrive.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if self.phase == Phase::Done {
            self.output.extend_from_slice(data);
            return;
        }
        self.input.extend_from_slice(data);
        let input = std::mem::take(&mut self.input);
        let mut start = 0;
        while self.phase != Phase::Done {
            let rest = &input[start..];
            if rest.len() < LEN {
                break;
            }
            // A bad length (or 0001-0003) is libgit2's to report: it gets
            // the bytes as they came.
            let Some(len) = pkt_len(&rest[..LEN]).filter(|l| *l == 0 || *l >= LEN) else {
                self.phase = Phase::Done;
                break;
            };
            let len = len.max(LEN);
            if rest.len() < len {
                break;
            }
            self.handle(&rest[..len]);
            start += len;
        }
        if self.phase == Phase::Done {
            self.output.extend_from_slice(&input[start..]);
        } else {
            self.input = input;
            self.input.drain(..start);
        }
    }

    /// The body ended: whatever was not a whole pkt goes on as it is
    /// (libgit2 reports the truncation).
    pub(crate) fn end(&mut self) {
        self.pass_rest(0);
    }

    fn pass_rest(&mut self, from: usize) {
        let input = std::mem::take(&mut self.input);
        self.output.extend_from_slice(&input[from..]);
        self.phase = Phase::Done;
    }

    fn handle(&mut self, pkt: &[u8]) {
        let flush = pkt == b"0000";
        match self.phase {
            Phase::Header => {
                self.output.extend_from_slice(pkt);
                if flush {
                    self.phase = Phase::Refs;
                }
            }
            Phase::Refs if flush => {
                self.finish();
                self.output.extend_from_slice(pkt);
                self.phase = Phase::Done;
            }
            Phase::Refs => self.ref_line(pkt),
            Phase::Done => self.output.extend_from_slice(pkt),
        }
    }

    fn show(&mut self, oid: Oid, pkt: &[u8]) {
        self.output.extend_from_slice(pkt);
        self.shown.insert(oid);
        self.refs_out += 1;
    }

    fn ref_line(&mut self, pkt: &[u8]) {
        let Some(line) = parse_ref(&pkt[LEN..]) else {
            // Not a ref line: libgit2 judges it (an error, mostly).
            self.output.extend_from_slice(pkt);
            return;
        };
        self.refs_in += 1;
        let candidate = std::str::from_utf8(line.name)
            .ok()
            .and_then(|n| self.intent.refs.get_key_value(n));
        if !self.seen_first_ref || line.has_caps {
            // The capabilities line (only the first may have them; a NUL on
            // a later line is libgit2's parse error to report).
            if !self.seen_first_ref
                && let Some((name, _)) = candidate
            {
                self.remote.insert(name.clone(), line.oid);
            }
            self.seen_first_ref = true;
            self.show(line.oid, pkt);
            self.last_shown = true;
            return;
        }
        if line.name.ends_with(b"^{}") {
            // A peeled tag: useful only next to its shown tag.
            if self.last_shown {
                self.show(line.oid, pkt);
            }
            self.last_shown = false;
            return;
        }
        self.last_shown = false;
        let pool = match candidate {
            Some((name, _)) if self.remote.contains_key(name) => return,
            Some((name, local)) => {
                self.remote.insert(name.clone(), line.oid);
                match local {
                    Some(v) if *v != line.oid => {
                        self.show(line.oid, pkt);
                        self.last_shown = true;
                        return;
                    }
                    Some(_) if line.name.starts_with(b"refs/heads/") => 0,
                    Some(_) => 2,
                    None => 3,
                }
            }
            None if line.name.starts_with(b"refs/heads/") => 1,
            None => 3,
        };
        if pkt.len() > MAX_HELD_LINE || line.oid.is_zero() {
            return;
        }
        if self.intent.values.contains(&line.oid) && !self.same_object.contains_key(&line.oid) {
            self.same_object.insert(line.oid, pkt.to_vec());
        }
        let pool = &mut self.pools[pool];
        if pool.lines.len() < MAX_HIDE_TIPS && pool.oids.insert(line.oid) {
            pool.lines.push((line.oid, pkt.to_vec()));
        }
    }

    /// The ref list ended: show the held lines that are worth it and record
    /// what the plan needs.
    fn finish(&mut self) {
        let intent = Arc::clone(&self.intent);
        let mut pushed: Vec<Oid> = Vec::new();
        for (name, local) in &intent.refs {
            let Some(value) = local else { continue };
            if self.remote.get(name) == Some(value) || self.shown.contains(value) {
                continue;
            }
            match self.same_object.remove(value) {
                Some(pkt) => self.show(*value, &pkt),
                None => pushed.push(*value),
            }
        }
        if !pushed.is_empty() {
            self.show_ancestors(&intent, &pushed);
        }
        let mut budget = MAX_HIDE_TIPS;
        let pools = std::mem::take(&mut self.pools);
        'pools: for pool in pools {
            for (oid, pkt) in pool.lines {
                if budget == 0 {
                    break 'pools;
                }
                if !self.shown.contains(&oid) {
                    self.show(oid, &pkt);
                    budget -= 1;
                }
            }
        }
        self.same_object.clear();
        use std::sync::atomic::Ordering::Relaxed;
        self.transfer
            .push_refs_advertised
            .fetch_add(self.refs_in, Relaxed);
        self.transfer
            .push_refs_shown
            .fetch_add(self.refs_out, Relaxed);
        if let Ok(mut seen) = intent.seen.lock() {
            *seen = Some(std::mem::take(&mut self.remote));
        }
    }

    /// Show the held refs at ancestors of `pushed` (tags peeled): a walk
    /// over parents of at most [`MAX_WALK`] commits that goes no further
    /// than a commit the remote is shown to have (libgit2 hides everything
    /// below it). Only an optimisation: a repository that cannot be read
    /// just ends it.
    fn show_ancestors(&mut self, intent: &PushIntent, pushed: &[Oid]) {
        let Ok(repo) = Repository::open_bare(&intent.repo) else {
            return;
        };
        let mut queue: VecDeque<Oid> = pushed
            .iter()
            .filter_map(|v| {
                let object = repo.find_object(*v, None).ok()?;
                object.peel(ObjectType::Commit).ok().map(|c| c.id())
            })
            .collect();
        let mut visited = HashSet::new();
        let mut budget = MAX_WALK;
        while let Some(commit) = queue.pop_front() {
            if !visited.insert(commit) || self.shown.contains(&commit) {
                continue;
            }
            if let Some(pkt) = self.same_object.remove(&commit) {
                self.show(commit, &pkt);
                continue;
            }
            if budget == 0 {
                break;
            }
            budget -= 1;
            if let Ok(c) = repo.find_commit(commit) {
                queue.extend(c.parent_ids());
            }
        }
    }
}

/// The four hex digits of a pkt-line length.
fn pkt_len(prefix: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(prefix).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    usize::from_str_radix(text, 16).ok()
}

struct RefLine<'a> {
    oid: Oid,
    name: &'a [u8],
    has_caps: bool,
}

/// `<40 hex> SP <name>[NUL <caps>][LF]`, as libgit2 reads a ref pkt.
fn parse_ref(payload: &[u8]) -> Option<RefLine<'_>> {
    let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
    let (head, has_caps) = match payload.iter().position(|b| *b == 0) {
        Some(nul) => (&payload[..nul], true),
        None => (payload, false),
    };
    if head.len() <= HEX + 1 || head[HEX] != b' ' {
        return None;
    }
    let hex = std::str::from_utf8(&head[..HEX]).ok()?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let oid = Oid::from_str(hex).ok()?;
    Some(RefLine {
        oid,
        name: &head[HEX + 1..],
        has_caps,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn oid(n: u32) -> Oid {
        Oid::from_str(&format!("{n:040x}")).unwrap()
    }

    fn pkt(payload: &str) -> Vec<u8> {
        format!("{:04x}{payload}", payload.len() + LEN).into_bytes()
    }

    fn ref_pkt(id: u32, name: &str) -> Vec<u8> {
        pkt(&format!("{} {name}\n", oid(id)))
    }

    const HEADER: &str = "# service=git-receive-pack\n";

    fn first(id: u32, name: &str) -> Vec<u8> {
        pkt(&format!(
            "{} {name}\0report-status delete-refs ofs-delta\n",
            oid(id)
        ))
    }

    /// The advertisement of `lines` (the first carries the capabilities).
    fn advertisement(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = pkt(HEADER);
        out.extend_from_slice(b"0000");
        for l in lines {
            out.extend_from_slice(l);
        }
        out.extend_from_slice(b"0000");
        out
    }

    /// Trim `raw`, fed `step` bytes at a time, read back in 7-byte reads.
    fn trim(intent: &Arc<PushIntent>, raw: &[u8], step: usize) -> (Vec<u8>, Arc<Transfer>) {
        let transfer = Arc::new(Transfer::default());
        let mut t = Trimmer::new(Arc::clone(intent), Arc::clone(&transfer));
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        for chunk in raw.chunks(step) {
            t.feed(chunk);
            loop {
                let n = t.take(&mut buf);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        t.end();
        loop {
            let n = t.take(&mut buf);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, transfer)
    }

    fn intent(refs: &[(&str, Option<u32>)]) -> Arc<PushIntent> {
        // No repository there: the ancestor walk finds nothing.
        Arc::new(PushIntent::new(
            PathBuf::from("/nonexistent/depot-test.git"),
            refs.iter()
                .map(|(n, v)| ((*n).to_owned(), v.map(oid)))
                .collect(),
        ))
    }

    #[test]
    fn keeps_capabilities_updates_and_same_object_tips_and_drops_the_rest() {
        // main moves 1 -> 2; the new tag t is at 1 (main's old value, shown
        // anyway); feature at 9 is created and `other` is at 9 already;
        // unchanged `kept` is at 5.
        let i = intent(&[
            ("refs/heads/main", Some(2)),
            ("refs/heads/feature", Some(9)),
            ("refs/heads/kept", Some(5)),
            ("refs/tags/t", Some(1)),
        ]);
        let mut lines = vec![first(100, "refs/heads/aaa")];
        lines.push(ref_pkt(1, "refs/heads/main"));
        lines.push(ref_pkt(5, "refs/heads/kept"));
        lines.push(ref_pkt(9, "refs/tags/other"));
        for n in 0..1000 {
            lines.push(ref_pkt(1000 + n, &format!("refs/tags/x{n}")));
        }
        let raw = advertisement(&lines);
        for step in [1, 3, 64, raw.len()] {
            let (out, transfer) = trim(&i, &raw, step);
            let mut want = pkt(HEADER);
            want.extend_from_slice(b"0000");
            want.extend_from_slice(&lines[0]);
            want.extend_from_slice(&lines[1]);
            // held: at feature's value; then unchanged branch, then tags.
            want.extend_from_slice(&lines[3]);
            want.extend_from_slice(&lines[2]);
            for l in &lines[4..4 + MAX_HIDE_TIPS - 1] {
                want.extend_from_slice(l);
            }
            want.extend_from_slice(b"0000");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            );
            assert!(
                transfer
                    .push_refs_advertised
                    .load(std::sync::atomic::Ordering::Relaxed)
                    >= 1003
            );
        }
        let seen = i.take_advertised().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen["refs/heads/main"], oid(1));
        assert_eq!(seen["refs/heads/kept"], oid(5));
    }

    #[test]
    fn empty_repository_line_and_oddities_pass_unchanged() {
        let i = intent(&[("refs/heads/main", Some(2))]);
        let empty = advertisement(&[pkt(&format!(
            "{} capabilities^{{}}\0report-status\n",
            Oid::zero()
        ))]);
        assert_eq!(trim(&i, &empty, 5).0, empty);
        assert!(i.take_advertised().unwrap().is_empty());

        let err = advertisement(&[pkt("ERR access denied\n")]);
        assert_eq!(trim(&intent(&[]), &err, 2).0, err);

        let mut bad = pkt(HEADER);
        bad.extend_from_slice(b"0000zzzzwhatever");
        let i = intent(&[]);
        assert_eq!(trim(&i, &bad, 3).0, bad);
        assert!(i.take_advertised().is_none());

        let mut truncated = pkt(HEADER);
        truncated.extend_from_slice(b"0000");
        truncated.extend_from_slice(&first(1, "refs/heads/a")[..20]);
        assert_eq!(trim(&intent(&[]), &truncated, 4).0, truncated);
    }

    #[test]
    fn a_candidate_is_recorded_from_its_first_line_only() {
        let i = intent(&[("refs/heads/main", Some(2)), ("refs/heads/gone", None)]);
        let lines = [
            first(7, "refs/heads/a"),
            ref_pkt(2, "refs/heads/main"),
            ref_pkt(3, "refs/heads/main"),
            ref_pkt(4, "refs/heads/gone"),
        ];
        let (out, _) = trim(&i, &advertisement(&lines), 11);
        let seen = i.take_advertised().unwrap();
        assert_eq!(seen["refs/heads/main"], oid(2));
        assert_eq!(seen["refs/heads/gone"], oid(4));
        // main is unchanged (held as a branch tip), its duplicate dropped,
        // the filtered one held last.
        let mut want = pkt(HEADER);
        want.extend_from_slice(b"0000");
        want.extend_from_slice(&lines[0]);
        want.extend_from_slice(&lines[1]);
        want.extend_from_slice(&lines[3]);
        want.extend_from_slice(b"0000");
        assert_eq!(out, want);
    }

    #[test]
    fn a_peeled_line_goes_with_its_ref() {
        let i = intent(&[("refs/tags/v1", Some(8))]);
        let lines = [
            first(7, "refs/heads/a"),
            ref_pkt(6, "refs/tags/v1"),
            ref_pkt(5, "refs/tags/v1^{}"),
            ref_pkt(4, "refs/tags/v2"),
            ref_pkt(3, "refs/tags/v2^{}"),
        ];
        let (out, _) = trim(&i, &advertisement(&lines), 2);
        let mut want = pkt(HEADER);
        want.extend_from_slice(b"0000");
        for l in &lines[..4] {
            want.extend_from_slice(l);
        }
        want.extend_from_slice(b"0000");
        assert_eq!(out, want);
    }
}
