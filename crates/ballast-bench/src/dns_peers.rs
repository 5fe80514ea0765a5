//! The authoritative servers `ballast bench dns` measures Ballast against: Knot DNS and NSD,
//! where Debian's `knot` and `nsd` packages are installed. Each gets a configuration of its own in
//! the benchmark's directory, serves the zone file `ballast dns export` would write, runs in the
//! foreground on a free loopback port with one worker, and is killed when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian installs the servers, which a user's PATH may leave out.
const SBIN: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// An authoritative DNS server to compare with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    Knot,
    Nsd,
}

/// A peer serving the zone, killed when dropped.
pub(crate) struct Running {
    child: Child,
    peer: Peer,
    version: String,
    pub(crate) address: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The peer's name and version, for the table.
    pub(crate) fn label(&self) -> String {
        format!("{} {}", self.peer.name(), self.version)
    }
}

impl Peer {
    pub(crate) const ALL: [Self; 2] = [Self::Knot, Self::Nsd];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Knot => "knot",
            Self::Nsd => "nsd",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::Knot => "knotd",
            Self::Nsd => "nsd",
        }
    }

    /// Starts the peer serving `zone_file` for `origin` under `dir`, on `cpus` when given, and
    /// waits until it answers `probe` (a query for a name in the zone) with NOERROR; `None` when
    /// it is not installed.
    pub(crate) fn start(
        self,
        dir: &Path,
        zone_file: &str,
        origin: &str,
        cpus: Option<&str>,
        probe: &[u8],
    ) -> Result<Option<Running>> {
        let Some(program) = crate::find_program(self.program(), SBIN) else {
            return Ok(None);
        };
        let home = dir.join(self.name());
        std::fs::create_dir_all(&home)?;
        std::fs::write(home.join("zone"), zone_file)?;
        let address = free_port()?;
        let config = home.join("server.conf");
        std::fs::write(&config, self.config(&home, origin, address))?;
        let version = version_of(&program, self);
        let mut command = crate::harness::command_on(cpus, &program);
        match self {
            Self::Knot => command.arg("-c").arg(&config),
            Self::Nsd => command.arg("-d").arg("-c").arg(&config),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(home.join("log"))?))
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut running = Running {
            child,
            peer: self,
            version,
            address,
        };
        wait_until_answering(&mut running, &home, probe)?;
        Ok(Some(running))
    }

    fn config(self, home: &Path, origin: &str, address: SocketAddr) -> String {
        let (ip, port, home) = (address.ip(), address.port(), home.display());
        match self {
            Self::Knot => format!(
                "server:\n    rundir: \"{home}\"\n    listen: {ip}@{port}\n    udp-workers: 1\n    \
                 tcp-workers: 1\n    background-workers: 1\n\
                 log:\n  - target: stderr\n    any: warning\n\
                 database:\n    storage: \"{home}\"\n\
                 zone:\n  - domain: {origin}\n    storage: \"{home}\"\n    file: zone\n"
            ),
            Self::Nsd => format!(
                "server:\n    ip-address: {ip}\n    port: {port}\n    server-count: 1\n    rrl-ratelimit: 0\n    \
                 username: \"\"\n    chroot: \"\"\n    database: \"\"\n    zonesdir: \"{home}\"\n    \
                 pidfile: \"{home}/nsd.pid\"\n    zonelistfile: \"{home}/zone.list\"\n    \
                 xfrdfile: \"{home}/xfrd.state\"\n    xfrdir: \"{home}\"\n    verbosity: 0\n\
                 remote-control:\n    control-enable: no\n\
                 zone:\n    name: {origin}\n    zonefile: zone\n"
            ),
        }
    }
}

fn version_of(program: &Path, peer: Peer) -> String {
    let flag = match peer {
        Peer::Knot => "-V",
        Peer::Nsd => "-v",
    };
    let output = Command::new(program).arg(flag).output().ok();
    let text = output
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    text.split_whitespace()
        .find(|word| word.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("")
        .to_owned()
}

/// A loopback port free for both UDP and TCP at the time of asking.
fn free_port() -> Result<SocketAddr> {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let address = udp.local_addr()?;
        if std::net::TcpListener::bind(address).is_ok() {
            return Ok(address);
        }
    }
    bail!("no free loopback port for UDP and TCP")
}

/// Sends `probe` every 50 ms until the peer answers it with NOERROR (10 s at most): the zone is
/// then loaded, not only the socket open.
fn wait_until_answering(running: &mut Running, home: &Path, probe: &[u8]) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(running.address)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Some(status) = running.child.try_wait()? {
            let log = std::fs::read_to_string(home.join("log")).unwrap_or_default();
            bail!("exited with {status}: {}", log.trim());
        }
        let _ = socket.send(probe);
        if matches!(socket.recv(&mut buffer), Ok(n) if n >= 12 && buffer[..2] == probe[..2] && buffer[3] & 0x0f == 0)
        {
            return Ok(());
        }
    }
    bail!("did not answer on {} within 10 s", running.address)
}
