//! A private PostgreSQL server for tests: `initdb` and `postgres` on a free loopback port in a
//! temp dir, one per test binary, each test in a database of its own. Never a shared system
//! instance. The server stops by itself when the test binary exits: it runs under a shell that
//! waits on a pipe from this process and stops the server (and removes its directory) when the
//! pipe closes, which the OS does at exit whatever way the tests end.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

struct Server {
    port: u16,
    /// Held open for the life of the process; its closing stops the server.
    _lifeline: Mutex<ChildStdin>,
    _shell: Mutex<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
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
            "PostgreSQL server programs (initdb, postgres) not found under /usr/lib/postgresql/*/bin; \
             scripts/test installs the `postgresql` package"
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

fn start() -> Server {
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
        "'{postgres}' -D '{data_text}' -p {port} -k '{dir_text}' -c listen_addresses=127.0.0.1 \
         -c fsync=off -c synchronous_commit=off >'{dir_text}/log' 2>&1 & pid=$!; \
         read -r _; kill -INT $pid; wait $pid; rm -rf '{dir_text}'",
        postgres = postgres.display()
    );
    let mut shell = command("bash", &["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("bash runs");
    let lifeline = shell.stdin.take().expect("piped stdin");

    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start; see {dir_text}/log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        port,
        _lifeline: Mutex::new(lifeline),
        _shell: Mutex::new(shell),
    }
}

/// A URL to a new, empty database on the private server (started on first use).
pub async fn database() -> String {
    let server = SERVER.get_or_init(start);
    let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
    let admin = format!("postgres://ballast@127.0.0.1:{}/postgres", server.port);
    // The server accepts connections a moment after it listens: retry briefly.
    sqlx::any::install_default_drivers();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = async {
            let mut connection = sqlx::AnyConnection::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut connection)
                .await
        }
        .await;
        match created {
            Ok(_) => break,
            Err(error) if Instant::now() >= deadline => panic!("CREATE DATABASE failed: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    format!("postgres://ballast@127.0.0.1:{}/{name}", server.port)
}
