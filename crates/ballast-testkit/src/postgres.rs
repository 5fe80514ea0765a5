//! Private PostgreSQL servers: `initdb` and `postgres` on a free loopback port in a temp dir.
//!
//! The server runs under a small supervising shell that reads commands from a pipe held by this
//! process (`stop`, `start`); when the pipe closes — the test binary exited, however it ended —
//! the shell stops the server and removes its directory. So nothing outlives the tests.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// A running private server.
pub struct Server {
    port: u16,
    dir: PathBuf,
    control: Mutex<ChildStdin>,
    _shell: Mutex<Child>,
}

static SHARED: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The directory with `initdb` and `postgres`: Debian keeps them off the PATH.
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|bin| bin.join("initdb").exists() && bin.join("postgres").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server programs (initdb, postgres) not found under \
             /usr/lib/postgresql/*/bin; scripts/test installs the `postgresql` package"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn command(program: &str, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

impl Server {
    /// Initializes and starts a server of its own (a few seconds: `initdb`).
    pub fn start() -> Self {
        let bin = server_bin();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("ballast-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().expect("utf-8 path")])
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of {dir:?} failed");
        }
        let data = dir.join("data");
        let (dir_text, data_text) = (dir.to_str().expect("utf-8"), data.to_str().expect("utf-8"));
        let initdb = bin.join("initdb");
        let output = command(
            initdb.to_str().expect("utf-8"),
            &[
                "-D",
                data_text,
                "-U",
                "ballast",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .output()
        .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let postgres = bin.join("postgres");
        let script = format!(
            "run() {{ '{postgres}' -D '{data_text}' -p {port} -k '{dir_text}' \
               -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
               >>'{dir_text}/log' 2>&1 & pid=$!; }}; \
             run; \
             while read -r command; do \
               case \"$command\" in \
                 stop) kill -INT $pid; wait $pid; echo stopped ;; \
                 start) run; echo started ;; \
               esac; \
             done; \
             kill -INT $pid 2>/dev/null; wait $pid; rm -rf '{dir_text}'",
            postgres = postgres.display()
        );
        let mut shell = command("bash", &["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("bash runs");
        let control = shell.stdin.take().expect("piped stdin");
        let server = Self {
            port,
            dir,
            control: Mutex::new(control),
            _shell: Mutex::new(shell),
        };
        server.wait_until(true);
        server
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://ballast@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        sqlx::any::install_default_drivers();
        // The server accepts connections a moment after it listens: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let created = async {
                let mut connection = sqlx::AnyConnection::connect(&self.url("postgres")).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut connection)
                    .await
            }
            .await;
            match created {
                Ok(_) => return self.url(&name),
                Err(error) if Instant::now() >= deadline => {
                    panic!(
                        "CREATE DATABASE failed: {error}; see {}/log",
                        self.dir.display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Stops the server (fast shutdown: connections are cut) and waits until it is down.
    pub fn stop(&self) {
        self.send("stop");
        self.wait_until(false);
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&self) {
        self.send("start");
        self.wait_until(true);
    }

    fn send(&self, line: &str) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(control, "{line}").expect("the supervising shell runs");
        control.flush().expect("flush");
    }

    fn wait_until(&self, listening: bool) {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(address).is_ok() != listening {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not {}; see {}/log",
                if listening { "start" } else { "stop" },
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A URL to a new, empty database on this test binary's shared server (started on first use).
pub async fn database() -> String {
    SHARED.get_or_init(Server::start).create_database().await
}
