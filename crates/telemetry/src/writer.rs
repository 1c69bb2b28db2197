//! The log writer: lines leave through one thread, in batches, and a
//! caller never makes a system call or wakes a thread per line.
//!
//! Why not tracing-appender's non-blocking writer: it hands every line to
//! its thread over a channel and wakes that thread for it (a `futex` call,
//! then the thread's own `write`), so a gateway answering 20,000 polls a
//! second paid two system calls and two context switches per request for
//! its access line (docs/benchmarks.md, row 1e).
//!
//! Invariants:
//! - A line is appended whole to one shared buffer, under a mutex; lines of
//!   one thread keep their order, and no line is split or interleaved.
//! - No line is lost: when the buffer holds [`Limits::max_bytes`], a caller
//!   waits until the thread has taken it (the same promise as before:
//!   callers wait rather than drop).
//! - The thread writes what it took in one `write_all` and flushes. An idle
//!   thread sleeps until a line arrives (one wake-up per idle-to-busy
//!   change) and writes it at once; a busy one writes at most every
//!   [`Limits::interval`], sooner when [`Limits::flush_bytes`] are waiting.
//! - Dropping the [`WriterGuard`] writes out everything pending, then ends
//!   the thread.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// When the thread writes, and how much may wait.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Write sooner than `interval` once this much is waiting.
    pub flush_bytes: usize,
    /// Callers wait while this much is waiting.
    pub max_bytes: usize,
    /// How long a busy thread gathers lines before it writes them.
    pub interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            flush_bytes: 64 * 1024,
            max_bytes: 1024 * 1024,
            interval: Duration::from_millis(10),
        }
    }
}

struct State {
    buf: Vec<u8>,
    /// The thread waits for a first line (no timeout): wake it.
    idle: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits on it for lines.
    lines: Condvar,
    /// Callers wait on it for room.
    room: Condvar,
    limits: Limits,
}

impl Shared {
    /// A poisoned lock means a thread panicked while appending; the buffer
    /// is still bytes, so logging goes on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where lines go: hand it to the `fmt` layer (`with_writer`).
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the thread; dropping it writes out what is pending.
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Start the thread writing to `sink`.
pub fn batch_writer<W: Write + Send + 'static>(
    sink: W,
    limits: Limits,
) -> std::io::Result<(BatchWriter, WriterGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: Vec::new(),
            idle: false,
            stop: false,
        }),
        lines: Condvar::new(),
        room: Condvar::new(),
        limits,
    });
    let ours = shared.clone();
    let thread = std::thread::Builder::new()
        .name("depot-log-writer".into())
        .spawn(move || run(&ours, sink))?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        WriterGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run<W: Write>(shared: &Shared, mut sink: W) {
    let mut batch = Vec::new();
    let mut state = shared.lock();
    loop {
        if state.buf.is_empty() {
            if state.stop {
                return;
            }
            state.idle = true;
            state = shared
                .lines
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        std::mem::swap(&mut state.buf, &mut batch);
        drop(state);
        shared.room.notify_all();
        // A log line that cannot be written (stdout closed) must not stop
        // the service; there is nowhere left to report it.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        batch.clear();
        state = shared.lock();
        if !state.stop && state.buf.len() < shared.limits.flush_bytes {
            state = shared
                .lines
                .wait_timeout(state, shared.limits.interval)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.lines.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = &self.shared;
        let mut state = shared.lock();
        while !state.buf.is_empty()
            && state.buf.len() + line.len() > shared.limits.max_bytes
            && !state.stop
        {
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.buf.extend_from_slice(line);
        if state.idle || state.buf.len() >= shared.limits.flush_bytes {
            state.idle = false;
            drop(state);
            shared.lines.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Instant;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &BatchWriter, text: &str) {
        let mut w = w;
        w.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_of_every_thread_arrives_whole_and_in_its_order() {
        let sink = Sink::default();
        let limits = Limits {
            flush_bytes: 64,
            max_bytes: 256,
            interval: Duration::from_millis(1),
        };
        let (writer, guard) = batch_writer(sink.clone(), limits).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = &writer;
                s.spawn(move || {
                    for i in 0..2000 {
                        line(writer, &format!("t{t} {i:05}\n"));
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().0.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8000);
        for t in 0..4 {
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let want: Vec<String> = (0..2000).map(|i| format!("t{t} {i:05}")).collect();
            assert_eq!(own, want, "thread {t}");
        }
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let limits = Limits {
            interval: Duration::from_secs(3600),
            ..Limits::default()
        };
        let (writer, _guard) = batch_writer(sink.clone(), limits).unwrap();
        line(&writer, "alone\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().0.is_empty() {
            assert!(Instant::now() < deadline, "the line never left");
            std::thread::yield_now();
        }
        assert_eq!(sink.0.lock().unwrap().0, b"alone\n");
    }

    #[test]
    fn a_busy_writer_writes_many_lines_per_write() {
        let sink = Sink::default();
        let (writer, guard) = batch_writer(sink.clone(), Limits::default()).unwrap();
        for i in 0..20_000 {
            line(&writer, &format!("{i}\n"));
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        assert_eq!(String::from_utf8(bytes).unwrap().lines().count(), 20_000);
        assert!(writes < 2_000, "{writes} writes for 20,000 lines");
    }
}
