//! Log lines gathered in memory and written out from a thread of their own.
//!
//! A busy gateway logs a line per request on its one worker thread. Handing each line to a
//! sleeping writer thread costs a wake-up (a system call, and on a virtual machine an interrupt
//! to the other core) per line: docs/benchmarks.md, forty-third round. Here a line wakes the
//! writer only when it is idle; after each write the writer waits [`GATHER`] before it looks
//! again, so under load one write carries every line of that interval and the request path makes
//! no system call for its line. A quiet service's line is written at once. Nothing is dropped
//! while the writer runs: past the byte bound a line waits for the writer to take the queue.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after a write: the most a line waits under load.
pub const GATHER: Duration = Duration::from_millis(10);

/// Bytes queued before a new line waits for the writer (about 30 000 request lines).
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

struct Queue {
    lines: Vec<u8>,
    writer_idle: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake_writer: Condvar,
    room: Condvar,
    max_queued: usize,
}

impl Shared {
    /// The queue, also after a thread panicked holding it: its bytes are still whole lines.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the subscriber writes each line; hand it to `with_writer`.
#[derive(Clone)]
pub struct GatheringWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread running; dropping it writes out every queued line and stops it.
/// Lines logged after that are dropped.
#[must_use = "dropping the guard stops the log writer"]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out`, gathering for `gather` and queueing at most
/// `max_queued` bytes before a line waits.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    gather: Duration,
    max_queued: usize,
) -> io::Result<(GatheringWriter, WriterGuard)> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            lines: Vec::new(),
            writer_idle: false,
            closed: false,
        }),
        wake_writer: Condvar::new(),
        room: Condvar::new(),
        max_queued,
    });
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("warren-log".into())
        .spawn(move || write_until_closed(&for_thread, out, gather))?;
    Ok((
        GatheringWriter {
            shared: Arc::clone(&shared),
        },
        WriterGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_until_closed<W: Write>(shared: &Shared, mut out: W, gather: Duration) {
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = shared.lock();
            while queue.lines.is_empty() && !queue.closed {
                queue.writer_idle = true;
                queue = shared
                    .wake_writer
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            queue.writer_idle = false;
            if queue.lines.is_empty() {
                break; // closed, and everything written
            }
            std::mem::swap(&mut batch, &mut queue.lines);
        }
        shared.room.notify_all();
        // Nowhere else to report a failed write to stdout: the lines are dropped.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // Let lines gather; writers do not wake us meanwhile (writer_idle is false).
        let queue = shared.lock();
        let _ = shared
            .wake_writer
            .wait_timeout_while(queue, gather, |queue| !queue.closed);
    }
    let _ = out.flush();
}

impl Write for &GatheringWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut queue = shared.lock();
        while queue.lines.len() >= shared.max_queued && !queue.closed {
            queue = shared
                .room
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if queue.closed {
            return Ok(line.len());
        }
        queue.lines.extend_from_slice(line);
        if queue.writer_idle {
            queue.writer_idle = false;
            drop(queue);
            shared.wake_writer.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for GatheringWriter {
    type Writer = &'a GatheringWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_all();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;

    /// An output the test can read while the writer holds it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn log_lines(writer: &GatheringWriter, thread: usize, count: usize) {
        for n in 0..count {
            let mut handle = writer.make_writer();
            handle
                .write_all(format!("thread {thread} line {n}\n").as_bytes())
                .unwrap();
        }
    }

    #[test]
    fn every_line_is_written_whole_and_in_each_threads_order() {
        let out = Captured::default();
        let (writer, guard) = spawn(out.clone(), GATHER, MAX_QUEUED_BYTES).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || log_lines(&writer, thread, 5_000))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = out.text();
        assert_eq!(text.lines().count(), 20_000);
        for thread in 0..4 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("thread {thread} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..5_000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_quiet_line_is_written_without_waiting_for_more() {
        let out = Captured::default();
        // A gather far longer than the test waits: the first line must not sit it out.
        let (writer, guard) = spawn(out.clone(), Duration::from_secs(60), 1024).unwrap();
        log_lines(&writer, 0, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.text(), "thread 0 line 0\n");
        let started = Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the guard waited out the gather"
        );
    }

    #[test]
    fn a_full_queue_makes_lines_wait_instead_of_dropping_them() {
        let out = Captured::default();
        // Room for about two lines, so most writes wait for the writer to take the queue.
        let (writer, guard) = spawn(out.clone(), Duration::from_millis(1), 40).unwrap();
        log_lines(&writer, 0, 500);
        drop(guard);
        assert_eq!(out.text().lines().count(), 500);
    }

    #[test]
    fn lines_after_the_guard_is_dropped_are_dropped_without_blocking() {
        let out = Captured::default();
        let (writer, guard) = spawn(out.clone(), GATHER, 16).unwrap();
        drop(guard);
        log_lines(&writer, 0, 100);
        assert_eq!(out.text(), "");
    }
}
