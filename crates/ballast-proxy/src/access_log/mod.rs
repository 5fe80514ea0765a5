//! The access log: one line per HTTP request (nginx's `access_log`), written by a thread of its
//! own so that the request path never waits on a disk.
//!
//! Each worker formats its lines into a buffer of its own (a mutex only the writer's swap ever
//! contends for); the writer swaps the buffers out a few times a second, or as soon as one holds
//! enough to be worth a write, and writes them. A buffer that is full because the writer fell
//! behind (a slow disk, a blocked pipe) drops the line and counts it
//! (`ballast_access_log_dropped_total`): losing log lines is better than stalling requests.
//!
//! SIGUSR1 reopens the file, as nginx's does, so that logrotate can move it away and the next
//! lines go to a new file.

mod line;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

pub(crate) use self::line::{Line, RequestFacts};

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "" => Err("an access log is a file path, or `-` for standard output".to_owned()),
            "-" => Ok(Self::Stdout),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("-"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How a line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, every field named.
    #[default]
    Json,
    /// nginx's default `combined` format.
    Combined,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "json" => Ok(Self::Json),
            "combined" => Ok(Self::Combined),
            other => Err(format!("`{other}`: json or combined")),
        }
    }
}

/// The access log's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// Where the lines go.
    pub target: LogTarget,
    /// How they are written.
    pub format: LogFormat,
}

/// How often the writer writes what the workers logged.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A worker's buffer wakes the writer at once when it holds this much.
const WAKE_AT: usize = 64 * 1024;
/// What a buffer keeps of its capacity once written out. Well above [`WAKE_AT`]: a worker keeps
/// logging while the writer is being scheduled, and a buffer that had to grow (a reallocation
/// and a copy, on fresh pages) every time it is swapped cost a tenth of the throughput.
const KEEP_CAPACITY: usize = 1024 * 1024;
/// A worker's buffer holds at most this much; lines beyond it are dropped.
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// A running access log.
#[derive(Debug)]
pub(crate) struct AccessLog {
    format: LogFormat,
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    target: LogTarget,
    /// One per worker, chosen by the thread that logs.
    shards: Box<[Mutex<Vec<u8>>]>,
    /// A shard holding this much drops lines.
    max_pending: usize,
    reopen: AtomicBool,
    stop: AtomicBool,
    lines: Counter,
    dropped: Counter,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[error("access log {target}: {source}")]
pub struct AccessLogError {
    target: LogTarget,
    source: io::Error,
}

impl AccessLog {
    /// Opens the log and starts its writer; `shards` is the number of threads that log.
    pub(crate) fn start(
        settings: &AccessLogSettings,
        shards: usize,
        counters: (Counter, Counter),
    ) -> Result<Self, AccessLogError> {
        Self::start_with_limit(settings, shards, counters, MAX_PENDING)
    }

    fn start_with_limit(
        settings: &AccessLogSettings,
        shards: usize,
        (lines, dropped): (Counter, Counter),
        max_pending: usize,
    ) -> Result<Self, AccessLogError> {
        let error = |source| AccessLogError {
            target: settings.target.clone(),
            source,
        };
        let output = open(&settings.target).map_err(error)?;
        let inner = Arc::new(Inner {
            target: settings.target.clone(),
            shards: (0..shards.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            max_pending,
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lines,
            dropped,
        });
        let writer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("ballast-access-log".to_owned())
                .spawn(move || inner.write_until_stopped(output))
                .map_err(error)?
        };
        Ok(Self {
            format: settings.format,
            inner,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Hands one line to the writer; never waits for it.
    pub(crate) fn record(&self, line: &Line<'_>) {
        let mut pending = self.inner.shard();
        let before = pending.len();
        if before >= self.inner.max_pending {
            drop(pending);
            self.inner.dropped.inc();
            return;
        }
        line.write(self.format, wall_clock(line.at), &mut pending);
        let wake = before < WAKE_AT && pending.len() >= WAKE_AT;
        drop(pending);
        self.inner.lines.inc();
        if wake {
            self.unpark();
        }
    }

    /// Reopens the file (after logrotate moved it): the next lines go to a file at its path.
    pub(crate) fn reopen(&self) {
        self.inner.reopen.store(true, Ordering::Relaxed);
        self.unpark();
    }

    /// Writes every line logged so far and stops the writer.
    pub(crate) fn finish(&self) {
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            self.inner.stop.store(true, Ordering::Relaxed);
            writer.thread().unpark();
            if writer.join().is_err() {
                tracing::error!("the access log's writer panicked");
            }
        }
    }

    fn unpark(&self) {
        if let Some(writer) = lock(&self.writer).as_ref() {
            writer.thread().unpark();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Inner {
    /// The calling thread's buffer.
    fn shard(&self) -> MutexGuard<'_, Vec<u8>> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let index = SHARD.with(|shard| *shard) % self.shards.len();
        lock(&self.shards[index])
    }

    fn write_until_stopped(&self, mut output: Box<dyn Write + Send>) {
        let mut batch = Vec::new();
        let mut failing = false;
        loop {
            std::thread::park_timeout(FLUSH_EVERY);
            let stopping = self.stop.load(Ordering::Relaxed);
            if self.reopen.swap(false, Ordering::Relaxed) {
                match open(&self.target) {
                    Ok(reopened) => {
                        let _ = output.flush();
                        output = reopened;
                        tracing::info!(target = %self.target, "access log reopened");
                    }
                    Err(error) => {
                        tracing::error!(target = %self.target, %error, "access log not reopened; writing on to the open file");
                    }
                }
            }
            for shard in &self.shards {
                std::mem::swap(&mut *lock(shard), &mut batch);
                if batch.is_empty() {
                    continue;
                }
                let written = output.write_all(&batch).and_then(|()| output.flush());
                match written {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(target = %self.target, "access log writable again");
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::error!(target = %self.target, %error, "access log write failed; its lines are lost until it succeeds");
                    }
                    Err(_) => {}
                }
                batch.clear();
                // A burst's buffer is not kept for ever.
                if batch.capacity() > KEEP_CAPACITY {
                    batch.shrink_to(KEEP_CAPACITY);
                }
            }
            if stopping {
                return;
            }
        }
    }
}

fn open(target: &LogTarget) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        LogTarget::Stdout => Box::new(io::stdout()),
        LogTarget::File(path) => {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?) as Box<File>
        }
    })
}

/// The wall-clock time of `at`, from an anchor each thread takes once a second: a line's time
/// and its duration then come from one reading of the clock, the request's end.
fn wall_clock(at: Instant) -> SystemTime {
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(Instant, SystemTime)>> =
            const { std::cell::Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        let fresh = anchor.get().and_then(|(instant, system)| {
            let since = at.checked_duration_since(instant)?;
            (since < Duration::from_secs(1)).then(|| system + since)
        });
        fresh.unwrap_or_else(|| {
            let (instant, system) = (Instant::now(), SystemTime::now());
            anchor.set(Some((instant, system)));
            match at.checked_duration_since(instant) {
                Some(ahead) => system + ahead,
                None => system
                    .checked_sub(instant.duration_since(at))
                    .unwrap_or(system),
            }
        })
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RequestFacts {
        RequestFacts::new("GET", b"h", "/", b"", b"", "id")
    }

    #[test]
    fn the_wall_clock_of_an_instant_is_the_system_clock_then() {
        let before = SystemTime::now();
        let at = Instant::now();
        let after = SystemTime::now();
        for _ in 0..2 {
            // The first call anchors, the second reads from the anchor.
            let wall = wall_clock(at);
            assert!(
                wall + Duration::from_millis(5) >= before
                    && wall <= after + Duration::from_millis(5),
                "{wall:?} not within {before:?}..{after:?}"
            );
        }
        let later = at + Duration::from_millis(1500);
        let wall = wall_clock(later);
        assert!(wall >= before + Duration::from_millis(1495), "{wall:?}");
    }

    fn line(request: &RequestFacts) -> Line<'_> {
        Line {
            client: "127.0.0.1:1".parse().expect("test"),
            request,
            protocol: "HTTP/1.1",
            status: 204,
            bytes_in: 0,
            bytes_out: 0,
            at: Instant::now(),
            total: Duration::ZERO,
            first_byte: None,
            backend: None,
            pool: None,
            route: None,
            retries: 0,
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ballast-{}-{name}", std::process::id()))
    }

    #[test]
    fn lines_reach_the_file_in_order_and_reopen_starts_a_new_one() {
        let path = temp_path("access.log");
        let moved = temp_path("access.log.1");
        let settings = AccessLogSettings {
            target: LogTarget::File(path.clone()),
            format: LogFormat::Combined,
        };
        let (lines, dropped) = (Counter::default(), Counter::default());
        let log = AccessLog::start(&settings, 2, (lines.clone(), dropped.clone())).expect("test");
        let request = facts();
        for status in [200, 201, 202] {
            log.record(&Line {
                status,
                ..line(&request)
            });
        }
        // Wait for the writer to write them, then move the file away as logrotate does.
        while std::fs::read_to_string(&path)
            .expect("test")
            .lines()
            .count()
            < 3
        {
            std::thread::park_timeout(Duration::from_millis(20));
        }
        std::fs::rename(&path, &moved).expect("test");
        log.reopen();
        while !path.exists() {
            std::thread::park_timeout(Duration::from_millis(20));
        }
        log.record(&line(&request));
        log.finish();
        let old = std::fs::read_to_string(&moved).expect("test");
        let statuses: Vec<&str> = old
            .lines()
            .map(|l| {
                l.split('"')
                    .nth(2)
                    .expect("test")
                    .split_whitespace()
                    .next()
                    .expect("test")
            })
            .collect();
        assert_eq!(statuses, ["200", "201", "202"]);
        let new = std::fs::read_to_string(&path).expect("test");
        assert_eq!(new.lines().count(), 1);
        assert!(new.contains("\" 204 0 "), "{new}");
        assert_eq!((lines.get(), dropped.get()), (4, 0));
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(moved);
    }

    #[test]
    fn a_writer_that_falls_behind_costs_lines_not_waiting() {
        let path = temp_path("full.log");
        let settings = AccessLogSettings {
            target: LogTarget::File(path.clone()),
            format: LogFormat::Json,
        };
        let (lines, dropped) = (Counter::default(), Counter::default());
        // A buffer with no room is a writer that fell behind: the line is dropped and counted.
        let log = AccessLog::start_with_limit(&settings, 1, (lines.clone(), dropped.clone()), 0)
            .expect("test");
        log.record(&line(&facts()));
        log.finish();
        assert_eq!((lines.get(), dropped.get()), (0, 1));
        assert_eq!(std::fs::read_to_string(&path).expect("test"), "");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn targets_and_formats_read_as_written() {
        assert_eq!("-".parse(), Ok(LogTarget::Stdout));
        assert_eq!(
            "/var/log/a.log".parse(),
            Ok(LogTarget::File("/var/log/a.log".into()))
        );
        assert!("".parse::<LogTarget>().is_err());
        assert_eq!("combined".parse(), Ok(LogFormat::Combined));
        assert!(
            "common"
                .parse::<LogFormat>()
                .expect_err("test")
                .contains("json or combined")
        );
    }
}
