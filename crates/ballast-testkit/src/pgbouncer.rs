//! A private PgBouncer in transaction pooling mode in front of a private PostgreSQL server, on
//! a free loopback port in a temp dir, stopped (its process group) and removed when dropped.
//!
//! Its server pool is kept small, so that clients share server connections as they do in
//! production: what a session leaves on a server connection (a named prepared statement, a
//! LISTEN) meets the next client.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A running PgBouncer.
pub struct Bouncer {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Bouncer {
    /// Starts one in front of the PostgreSQL server on 127.0.0.1:`server_port` (any database,
    /// user `ballast`, trust), waiting until it accepts connections.
    pub fn start(server_port: u16) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("ballast-pgbouncer-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port={server_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = transaction\n\
             default_pool_size = 2\nmax_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits,search_path\n\
             logfile = {dir}/log\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("config");
        std::fs::write(dir.join("users.txt"), "\"ballast\" \"\"\n").expect("users");
        // PgBouncer refuses to run as root.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let ini = dir.join("pgbouncer.ini");
        let mut command = if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of {dir:?} failed");
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--", "pgbouncer"])
                .arg(&ini);
            command
        } else {
            let mut command = Command::new("pgbouncer");
            command.arg(&ini);
            command
        };
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "pgbouncer cannot run ({error}); scripts/test installs the `pgbouncer` package"
                )
            });
        let mut bouncer = Self { port, dir, child };
        bouncer.wait_until_listening();
        bouncer
    }

    /// A URL for database `name` through this bouncer.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://ballast@127.0.0.1:{}/{name}", self.port)
    }

    /// One in front of the server of `direct` (a testkit URL, `postgres://ballast@127.0.0.1:
    /// PORT/NAME`), and the URL of the same database through it.
    pub fn in_front_of(direct: &str) -> (Self, String) {
        let (server, name) = direct
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split_once('/'))
            .expect("postgres://USER@HOST:PORT/NAME");
        let bouncer = Self::start(server.parse().expect("a port"));
        let url = bouncer.url(name);
        (bouncer, url)
    }

    fn wait_until_listening(&mut self) {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(address).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgbouncer exited ({status}); see {}/log",
                    self.dir.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen; see {}/log",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
