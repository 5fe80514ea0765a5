//! `ballast up` end to end, as a newcomer runs it: the whole system from one command in a fresh
//! directory. Requests through the LBs that DNS names reach every backend; a killed backend is
//! started again and no GET fails meanwhile; a killed LB leaves DNS and the orchestrator replaces
//! it; an algorithm change shows in where requests go; SIGINT (Ctrl-C) stops everything and
//! leaves no process; started again on the same directory, it resumes the configuration.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use support::{backend_of, cli, eventually, get, resolver, unused_addr};

const NAME: &str = "lb.demo.ballast.local.";

/// A running `ballast up` and the lines it printed.
struct Up {
    child: Child,
    lines: Receiver<String>,
    printed: Vec<String>,
}

impl Up {
    fn start(dir: &Path, ports: &Ports) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["up", "--dir", dir.to_str().expect("utf-8 path")])
            .args(["--lbs", "2", "--backends", "3"])
            .args(["--admin", &ports.admin.to_string()])
            .args(["--dns", &ports.dns.to_string()])
            .args(["--lb-port", &ports.lb.to_string()])
            .args(["--backend-port", &ports.backend.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ballast up starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut up = Self {
            child,
            lines,
            printed: Vec::new(),
        };
        up.wait_for_line("Ctrl-C stops everything", Duration::from_secs(120));
        up
    }

    /// Waits for a line containing `text`; returns it.
    fn wait_for_line(&mut self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with `{text}` in {limit:?}; printed {:#?}",
                    self.printed
                ),
            }
        }
    }

    /// SIGINT, as Ctrl-C sends, then waits (bounded) for it to exit.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        signal("INT", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "ballast up did not stop in 90 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.interrupt();
        }
    }
}

struct Ports {
    admin: SocketAddr,
    dns: SocketAddr,
    lb: u16,
    backend: u16,
}

/// The first of `count` loopback ports in a row that are all free now (`ballast up` puts its
/// backends on `--backend-port` and the ports after it): each is checked, none assumed.
fn free_ports_in_a_row(count: u16) -> u16 {
    for _ in 0..1000 {
        let first = unused_addr().port();
        let Some(last) = first.checked_add(count - 1) else {
            continue;
        };
        let held: Vec<_> = (first..=last)
            .map_while(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
            .collect();
        if held.len() == usize::from(count) {
            return first;
        }
    }
    panic!("no {count} free ports in a row on 127.0.0.1");
}

fn signal(name: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// The processes whose command line contains `fragment` (this test's own, found in /proc).
fn pids_with(fragment: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(fragment) && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

fn lookup(runtime: &tokio::runtime::Runtime, dns: SocketAddr) -> BTreeSet<Ipv4Addr> {
    let resolver = resolver(dns);
    runtime
        .block_on(resolver.ipv4_lookup(NAME))
        .map(|answer| answer.iter().map(|a| a.0).collect())
        .unwrap_or_default()
}

/// The backends that answered `n` GETs through `lb`.
fn backends_behind(lb: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| backend_of(&get(lb, "/", &[]))).collect()
}

#[test]
fn ballast_up_runs_the_whole_system_and_stops_it_whole() {
    let dir: PathBuf = std::env::temp_dir().join(format!("ballast-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_text = dir.to_str().expect("utf-8 path").to_owned();
    let ports = Ports {
        admin: unused_addr(),
        dns: unused_addr(),
        lb: unused_addr().port(),
        backend: free_ports_in_a_row(3),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut up = Up::start(&dir, &ports);
    let token = std::fs::read_to_string(dir.join("token")).expect("token file");
    let token = token.trim();
    let first_token = token.to_owned();
    assert!(
        up.printed.iter().any(|l| l.contains(token)),
        "the token is printed"
    );
    // Each LB logs to a file of its own, not into control's.
    for lb in ["lb-01", "lb-02"] {
        assert!(
            dir.join(format!("logs/{lb}.log")).exists(),
            "no logs/{lb}.log"
        );
    }

    // DNS names both LBs; through each, requests reach all three backends.
    let lb_ips: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)]
        .into_iter()
        .collect();
    eventually(Duration::from_secs(10), "DNS names both LBs", || {
        lookup(&runtime, ports.dns) == lb_ips
    });
    let all_backends: BTreeSet<String> = ["backend-1", "backend-2", "backend-3"]
        .map(str::to_owned)
        .into_iter()
        .collect();
    for ip in &lb_ips {
        let lb = SocketAddr::from((IpAddr::V4(*ip), ports.lb));
        assert_eq!(backends_behind(lb, 12), all_backends, "through {lb}");
    }

    // A backend killed: started again, and no GET fails meanwhile.
    let lbs: Vec<SocketAddr> = lb_ips
        .iter()
        .map(|ip| SocketAddr::from((IpAddr::V4(*ip), ports.lb)))
        .collect();
    let victims = pids_with(&format!(
        "--listen 127.0.0.1:{} --name backend-2",
        ports.backend + 1
    ));
    assert_eq!(victims.len(), 1, "one backend-2 process: {victims:?}");
    signal("KILL", victims[0]);
    let started = Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let reply = get(lbs[requests % lbs.len()], "/", &[]);
        assert_eq!(
            reply.status, 200,
            "GET {requests} after the kill: {reply:?}"
        );
        requests += 1;
    }
    up.wait_for_line("backend-2 exited", Duration::from_secs(10));
    up.wait_for_line("backend-2 started again", Duration::from_secs(10));
    // The LBs ejected it when it refused connections (for 30 s, as Envoy does, or until the
    // health check finds it healthy again after finding it down); then it takes traffic again.
    eventually(
        Duration::from_secs(50),
        "backend-2 back in rotation",
        || {
            lbs.iter()
                .all(|lb| backends_behind(*lb, 12) == all_backends)
        },
    );

    // An LB killed leaves DNS; the orchestrator starts another in its place (the provisioner
    // gives a new LB the lowest free slot: lb-02's, on 127.0.0.12). How many LBs DNS names
    // meanwhile is the autoscaler's to decide: the GETs above may have scaled the fleet up.
    let victims = pids_with(&format!("{dir_text}/ballast.db --name lb-02"));
    assert_eq!(victims.len(), 1, "one lb-02 process: {victims:?}");
    signal("KILL", victims[0]);
    let slot = Ipv4Addr::new(127, 0, 0, 12);
    eventually(Duration::from_secs(20), "DNS without 127.0.0.12", || {
        !lookup(&runtime, ports.dns).contains(&slot)
    });
    eventually(
        Duration::from_secs(30),
        "a new LB on 127.0.0.12 in DNS",
        || lookup(&runtime, ports.dns).contains(&slot),
    );

    // Maglev on the client's IP sends every request from here to one backend.
    let output = cli(
        ports.admin,
        token,
        &["pool", "set-algorithm", "demo", "--algorithm", "maglev"],
    );
    assert!(output.status.success(), "{output:?}");
    eventually(Duration::from_secs(10), "one backend under maglev", || {
        backends_behind(lbs[0], 12).len() == 1
    });

    // Ctrl-C: everything stops, nothing is left; meanwhile the status shows the LBs draining.
    assert!(up.interrupt().success());
    let said: Vec<String> = up.lines.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.starts_with("status:") && l.contains(" draining)")),
        "no draining status while stopping: {said:#?}"
    );
    assert_eq!(pids_with(&dir_text), Vec::<u32>::new(), "left behind");
    assert_eq!(
        pids_with(&format!("127.0.0.1:{}", ports.backend)),
        Vec::<u32>::new(),
        "a backend left behind"
    );

    // Started again on the same directory: the same configuration.
    let mut up = Up::start(&dir, &ports);
    assert!(
        up.printed.iter().any(|l| l.contains("resumed at revision")),
        "{:#?}",
        up.printed
    );
    // The token is kept: what the user exported still works.
    let kept = std::fs::read_to_string(dir.join("token")).expect("token file");
    assert_eq!(kept.trim(), first_token, "the token changed across starts");
    let output = cli(ports.admin, &first_token, &["pool", "show", "demo"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("maglev"),
        "{output:?}"
    );
    assert!(up.interrupt().success());
    assert_eq!(pids_with(&dir_text), Vec::<u32>::new(), "left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_port_is_named_before_anything_starts() {
    let dir = std::env::temp_dir().join(format!("ballast-up-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // As a second `ballast up` with the first one's ports would find them.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("address");
    let output = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["up", "--dir", dir.to_str().expect("utf-8 path")])
        .args(["--admin", &taken.to_string()])
        .args(["--dns", &unused_addr().to_string()])
        .args(["--lb-port", &unused_addr().port().to_string()])
        .args(["--backend-port", &free_ports_in_a_row(3).to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("ballast up runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{taken} is in use"))
            && stderr.contains("nothing was started")
            && stderr.contains("--admin ADDR"),
        "{stderr}"
    );
    let logs: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(logs.is_empty(), "children were started: {logs:?}");
    assert!(!dir.join("ballast.db").exists(), "the database was created");
    let _ = std::fs::remove_dir_all(&dir);
}
