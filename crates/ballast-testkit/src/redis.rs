//! Private Redis servers: `redis-server` on a free loopback port in a temp dir, never the
//! machine's own on 6379. Five of them make a Redlock cluster.
//!
//! As for PostgreSQL, each server runs under a small supervising shell that reads commands from a
//! pipe this process holds (`kill`, `start`, `pause`, `resume`); when the pipe closes, however the
//! test binary ended, the shell kills the server and removes its directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a server keeps its data across a `kill` and `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk: a restarted server is empty (the usual test setting).
    None,
    /// An append-only file synced on every write (`appendfsync always`): a restarted server has
    /// every acknowledged write, as Redlock's safety argument requires.
    AppendFsyncAlways,
}

/// A running private server.
pub struct Server {
    port: u16,
    dir: PathBuf,
    /// Commands to the supervising shell, and its acknowledgements (one line per command, once
    /// it has been carried out).
    control: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _shell: Mutex<Child>,
}

static STARTED: AtomicU32 = AtomicU32::new(0);

/// `redis-server`, or a clear failure saying how to get it.
fn server_program() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server not found on the PATH; scripts/test installs the `redis-server` package"
    );
    "redis-server"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn quoted(path: &Path) -> String {
    format!(
        "'{}'",
        path.to_str().expect("utf-8 path").replace('\'', r"'\''")
    )
}

impl Server {
    /// Starts a server that keeps nothing on disk.
    pub fn start() -> Self {
        Self::start_with(Persistence::None)
    }

    /// Starts a server with the given persistence, and waits until it answers PING. The port is
    /// free when chosen but may be taken before redis-server binds it (by any other process on
    /// the machine): then a server on another port is started instead.
    pub fn start_with(persistence: Persistence) -> Self {
        for _ in 0..3 {
            let server = Self::spawn(persistence);
            if server.answers_ping(Duration::from_secs(10)) {
                return server;
            }
        }
        panic!("redis-server did not start on any of three ports");
    }

    /// A server on a port that was free a moment ago (dropped: its shell kills it).
    fn spawn(persistence: Persistence) -> Self {
        let program = server_program();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ballast-redis-{}-{}-{nanos}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let persistence = match persistence {
            Persistence::None => "--appendonly no",
            Persistence::AppendFsyncAlways => "--appendonly yes --appendfsync always",
        };
        let dir_text = quoted(&dir);
        let script = format!(
            "run() {{ {program} --port {port} --bind 127.0.0.1 --save '' {persistence} \
               --dir {dir_text} >>{dir_text}/log 2>&1 & pid=$!; }}; \
             run; \
             while read -r command; do \
               case \"$command\" in \
                 kill) kill -9 $pid; wait $pid ;; \
                 start) run ;; \
                 pause) kill -STOP $pid ;; \
                 resume) kill -CONT $pid ;; \
               esac; \
               echo done; \
             done; \
             kill -9 $pid 2>/dev/null; wait $pid; rm -rf {dir_text}"
        );
        let mut shell = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // bash reports each killed job ("Killed …") on stderr: noise in test output.
            .stderr(Stdio::null())
            .spawn()
            .expect("bash runs");
        let control = shell.stdin.take().expect("piped stdin");
        let acks = BufReader::new(shell.stdout.take().expect("piped stdout"));
        Self {
            port,
            dir,
            control: Mutex::new((control, acks)),
            _shell: Mutex::new(shell),
        }
    }

    /// Whether our redis-server answers PING within `limit` (not merely whether something
    /// accepts connections on its port).
    fn answers_ping(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(self.address()) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut answer = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// `count` servers that keep nothing on disk: a Redlock cluster.
    pub fn cluster(count: usize) -> Vec<Self> {
        (0..count).map(|_| Self::start()).collect()
    }

    /// The server's address on loopback.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its URL, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address())
    }

    /// Kills the server at once (SIGKILL, as a crash) and waits until it is gone.
    pub fn kill(&self) {
        self.send("kill");
        self.wait_until(false);
    }

    /// Starts the killed server again on the same port and directory.
    pub fn start_again(&self) {
        self.send("start");
        assert!(
            self.answers_ping(Duration::from_secs(20)),
            "redis-server did not start again; see {}/log",
            self.dir.display()
        );
    }

    /// Freezes the server (SIGSTOP) and returns once it is frozen: connections stay open but
    /// nothing is answered, so clients see timeouts rather than refusals.
    pub fn pause(&self) {
        self.send("pause");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.send("resume");
    }

    /// Sends one command and waits until the shell has carried it out.
    fn send(&self, line: &str) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let (commands, acks) = &mut *control;
        writeln!(commands, "{line}").expect("the supervising shell runs");
        commands.flush().expect("flush");
        let mut ack = String::new();
        acks.read_line(&mut ack)
            .expect("the supervising shell answers");
    }

    fn wait_until(&self, listening: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.address()).is_ok() != listening {
            assert!(
                Instant::now() < deadline,
                "redis-server did not {}; see {}/log",
                if listening { "start" } else { "stop" },
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The servers' URLs, comma-separated, as `--redis` takes them.
pub fn urls(servers: &[Server]) -> String {
    servers
        .iter()
        .map(Server::url)
        .collect::<Vec<_>>()
        .join(",")
}
