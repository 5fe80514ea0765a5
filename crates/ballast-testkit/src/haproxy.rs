//! A private HAProxy, the peer the PROXY protocol tests talk to both ways: its configuration's
//! sections are the test's, its ports free loopback ports, its directory a temp dir, and it is
//! stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A running HAProxy.
pub struct Server {
    /// The ports `{PORT0}`, `{PORT1}`, … stood for in its sections.
    pub ports: Vec<u16>,
    ready_port: u16,
    dir: PathBuf,
    child: Child,
}

impl Server {
    /// Starts HAProxy with `sections` (frontends and backends) after its own `global` and
    /// `defaults`, each `{PORTn}` in them replaced by a free loopback port, and waits until it
    /// answers.
    pub fn start(sections: &str, ports: usize) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("ballast-haproxy-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let ports: Vec<u16> = (0..ports).map(|_| free()).collect();
        let ready_port = free();
        let mut sections = sections.to_owned();
        for (n, port) in ports.iter().enumerate() {
            sections = sections.replace(&format!("{{PORT{n}}}"), &port.to_string());
        }
        let config = format!(
            "global\n  maxconn 1024\n\
             defaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend ready\n  mode http\n  bind 127.0.0.1:{ready_port}\n  \
             http-request return status 200 content-type text/plain string ready\n\
             {sections}\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("config");
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("haproxy cannot run ({error}); scripts/test installs the `haproxy` package")
            });
        let server = Self {
            ports,
            ready_port,
            dir,
            child,
        };
        server.wait_until_ready();
        server
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = TcpStream::connect(("127.0.0.1", self.ready_port)).is_ok_and(|mut s| {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                answer.starts_with("HTTP/1.1 200")
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not become ready; see {}/log",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
