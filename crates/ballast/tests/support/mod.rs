//! Test harness for the `ballast` binary: real processes on loopback, each reporting its
//! addresses on stdout when ready (so tests never guess ports or sleep). Each runs in a process
//! group of its own, and when dropped — a test that passed or one that failed — gets SIGTERM,
//! a bounded wait, then SIGKILL for the whole group, so nothing it started outlives the test.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `ballast` process.
pub struct Process {
    child: Child,
    /// The `listening …` / `admin …` lines it printed when ready.
    pub ready: Vec<String>,
}

impl Process {
    /// Starts `ballast ARGS` and waits (bounded) until it has printed `lines` ready lines.
    pub fn start(args: &[&str], lines: usize) -> Self {
        Self::start_under(&[], args, lines)
    }

    /// [`Process::start`] through a `wrapper` command that runs the rest of its arguments (e.g.
    /// `prlimit --nofile=64 --`).
    pub fn start_under(wrapper: &[&str], args: &[&str], lines: usize) -> Self {
        let binary = env!("CARGO_BIN_EXE_ballast");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(args)
            .process_group(0)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ballast starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ready = Vec::new();
        while ready.len() < lines {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => ready.push(line),
                Err(_) => {
                    stop_group(&mut child, Duration::from_secs(5));
                    panic!("ballast {args:?} did not become ready; printed {ready:?}");
                }
            }
        }
        Self { child, ready }
    }

    /// The address of the n-th `listening` line.
    pub fn listen_addr(&self, n: usize) -> SocketAddr {
        self.ready
            .iter()
            .filter(|l| l.starts_with("listening "))
            .nth(n)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listening line {n} in {:?}", self.ready))
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.ready
            .iter()
            .find_map(|l| l.strip_prefix("admin "))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin line in {:?}", self.ready))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill`, to stay free of unsafe code).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Sends signal `name` (`HUP`, `USR1`, …) through `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(10));
    }
}

/// Stops `child` and everything in its process group: SIGTERM to the group, up to `patience` for
/// the child to exit, then SIGKILL to the group (children it started but did not stop included).
pub fn stop_group(child: &mut Child, patience: Duration) {
    let group = rustix::process::Pid::from_raw(child.id() as i32);
    let signal_group = |signal| {
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, signal);
        }
    };
    if matches!(child.try_wait(), Ok(None)) {
        signal_group(rustix::process::Signal::TERM);
        let deadline = Instant::now() + patience;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    signal_group(rustix::process::Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `ballast ARGS`, which must fail before reporting ready; returns its stderr.
pub fn rejected(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .output()
        .expect("the ballast binary runs");
    assert!(!output.status.success(), "ballast {args:?} should fail");
    assert!(
        output.stdout.is_empty(),
        "ballast {args:?} printed on stdout"
    );
    String::from_utf8(output.stderr).expect("utf-8 stderr")
}

/// A fresh directory under the system temp dir, removed on drop (a test that failed included).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "ballast-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An echo backend named `name`.
pub fn echo(name: &str, extra: &[&str]) -> (Process, SocketAddr) {
    let mut args = vec!["echo", "--listen", "127.0.0.1:0", "--name", name];
    args.extend_from_slice(extra);
    let process = Process::start(&args, 1);
    let address = process.listen_addr(0);
    (process, address)
}

/// An LB server on a free port with an admin endpoint, `--workers 1` unless `extra` says.
pub fn lb(backends: &[SocketAddr], extra: &[&str]) -> (Process, SocketAddr) {
    let mut args: Vec<String> = ["lb", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    for backend in backends {
        args.push("--backend".into());
        args.push(backend.to_string());
    }
    if !extra.contains(&"--workers") {
        args.extend(["--workers".into(), "1".into()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = Process::start(&refs, 2);
    let address = process.listen_addr(0);
    (process, address)
}

/// Creates a round-robin pool `name` with `backends` (weight 1) straight in the store, as an
/// operator would through the admin API.
pub fn create_pool(
    runtime: &tokio::runtime::Runtime,
    store: &ballast_config::SqlStore,
    name: &str,
    backends: &[SocketAddr],
) {
    use ballast_config::{AlgorithmSpec, PoolSpec, Write};
    let pool = Write::CreatePool(PoolSpec {
        name: name.into(),
        algorithm: AlgorithmSpec::named("round_robin"),
        hash_key: "client_ip".into(),
        dns_name: None,
        policy: Default::default(),
    });
    runtime.block_on(store.apply(pool)).expect("pool");
    for backend in backends {
        let add = Write::AddBackend {
            pool: name.into(),
            address: backend.to_string(),
            weight: 1,
        };
        runtime.block_on(store.apply(add)).expect("backend");
    }
}

/// A managed LB on database `url` serving `pool`, with an admin endpoint and one worker; `extra`
/// may add listeners (`--listen ADDR --pool NAME`).
pub fn managed_lb(url: &str, pool: &str, extra: &[&str]) -> Process {
    managed_lb_serving(url, ["--pool", pool], extra)
}

/// [`managed_lb`] serving what `serves` says: `["--pool", NAME]` or `["--routes", TABLE]`.
pub fn managed_lb_serving(url: &str, serves: [&str; 2], extra: &[&str]) -> Process {
    let mut args = vec![
        "lb",
        "--db",
        url,
        serves[0],
        serves[1],
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    let listeners = 1 + extra.iter().filter(|a| **a == "--listen").count();
    Process::start(&args, listeners + 1)
}

/// `ballast dns` for zone `ballast.local` on database `url`, on a free port; `extra` flags
/// follow (`--admin ADDR` adds its ready line).
pub fn dns(url: &str, extra: &[&str]) -> Process {
    let mut args = vec![
        "dns",
        "--db",
        url,
        "--listen",
        "127.0.0.1:0",
        "--zone",
        "ballast.local",
    ];
    args.extend_from_slice(extra);
    let lines = 1 + usize::from(extra.contains(&"--admin"));
    Process::start(&args, lines)
}

/// A free loopback port nobody listens on (bound, then released).
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A response read from a raw HTTP/1.1 exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` (raw bytes) and reads the reply until the server closes.
pub fn raw(address: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET path` with `headers`, one connection per request.
pub fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw(address, request.as_bytes())
}

/// The backend name in an echo reply.
pub fn backend_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body.lines().next().unwrap_or("").to_owned()
}

/// The value of one metric line, e.g. `ballast_backend_ejections_total{…} 1`.
pub fn metric(admin: SocketAddr, prefix: &str) -> Option<f64> {
    let reply = get(admin, "/metrics", &[]);
    reply
        .body
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `condition` every 20 ms until it holds, for at most `limit`.
pub fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ballast control` on database `url`, on a free port, with `token` written to `dir/token`;
/// `extra` flags follow.
pub fn control(url: &str, dir: &std::path::Path, token: &str, extra: &[&str]) -> Process {
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).expect("token file");
    let mut args = vec![
        "control",
        "--db",
        url,
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        token_file.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    Process::start(&args, 1)
}

/// Runs `ballast ARGS` against the admin API at `control` with `token` (through
/// `BALLAST_CONTROL` and `BALLAST_TOKEN`, as a user would set them).
pub fn cli(control: SocketAddr, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .env("BALLAST_CONTROL", format!("http://{control}"))
        .env("BALLAST_TOKEN", token)
        .output()
        .expect("ballast runs")
}

/// The revision a write command (`ballast pool create …`, `route add …`) printed; the command
/// must succeed.
pub fn cli_revision(control: SocketAddr, token: &str, args: &[&str]) -> f64 {
    let output = cli(control, token, args);
    assert!(
        output.status.success(),
        "ballast {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8_lossy(&output.stdout);
    out.trim()
        .strip_prefix("revision ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("ballast {args:?} printed {out:?}"))
}

/// A resolver that asks only `server` and caches nothing, as a client of `ballast dns`.
pub fn resolver(server: SocketAddr) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), servers),
        hickory_resolver::name_server::TokioConnectionProvider::default(),
    );
    builder.options_mut().cache_size = 0;
    builder.build()
}

/// Asks `address` to switch to echoing bytes, then sends bytes: the response head, and what
/// came back.
pub fn upgrade(address: std::net::SocketAddr) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .expect("timeout");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return (head, Vec::new());
    }
    stream.write_all(b"ping through the tunnel").expect("write");
    let mut echoed = vec![0u8; 23];
    stream.read_exact(&mut echoed).expect("echo");
    (head, echoed)
}

/// A self-signed certificate for `names`: (certificate PEM, key PEM, certificate DER).
pub fn certificate(names: &[&str]) -> (String, String, Vec<u8>) {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let certified = rcgen::generate_simple_self_signed(names).expect("cert");
    (
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
        certified.cert.der().to_vec(),
    )
}

/// A self-signed certificate for `localhost` written to `dir` as `cert.pem` and `key.pem`: the
/// two paths as `--tls-cert` and `--tls-key` take them, and the certificate's PEM.
pub fn localhost_tls_files(dir: &std::path::Path) -> (String, String, String) {
    let (cert, key, _) = certificate(&["localhost"]);
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert).expect("write cert");
    std::fs::write(&key_path, &key).expect("write key");
    let text = |path: std::path::PathBuf| path.to_str().expect("utf-8").to_owned();
    (text(cert_path), text(key_path), cert)
}

/// Accepts whatever certificate a server presents (its signatures still checked), so that a
/// test can look at which one it was.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate a TLS handshake with `address` for `name` presents (an IP address as `name`
/// sends no SNI).
pub fn presented(address: SocketAddr, name: &str) -> Vec<u8> {
    over_tls(address, name, None).0
}

/// A GET for `/` with `host` over TLS with SNI `name` (HTTP/1.1, ALPN not offered), and the
/// certificate the server presented.
pub fn get_over_tls(address: SocketAddr, name: &str, host: &str) -> Reply {
    get_over_tls_with(address, name, host, "/", &[])
}

/// [`get_over_tls`] for `path`, with more request headers.
pub fn get_over_tls_with(
    address: SocketAddr,
    name: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let request = TlsRequest {
        host,
        path,
        headers,
    };
    over_tls(address, name, Some(request)).1.expect("a reply")
}

/// A GET sent over TLS.
struct TlsRequest<'a> {
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

fn over_tls(
    address: SocketAddr,
    name: &str,
    request: Option<TlsRequest<'_>>,
) -> (Vec<u8>, Option<Reply>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut tls = connector
            .connect(name, stream)
            .await
            .expect("TLS handshake");
        let certificate = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
        let Some(TlsRequest {
            host,
            path,
            headers,
        }) = request
        else {
            return (certificate, None);
        };
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut bytes)).await;
        (certificate, Some(parse(&bytes)))
    })
}
