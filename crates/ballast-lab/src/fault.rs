//! Faults between hosts, as networks and machines really fail:
//! - a **partition** drops packets (nftables, no reset, no ICMP): a sender learns nothing until
//!   its own timeout, as across a dead link or a firewall that discards;
//! - **loss** drops a share of what a host sends and receives, at random;
//! - **delay** holds what a host sends (tc netem; the kernel must have it);
//! - **pause** stops a host's processes (SIGSTOP), as a long GC pause or a VM stall does, and
//!   **resume** continues them; **kill** ends them, **restart** starts them again.
//!
//! Network faults live in each host's own namespace (an nftables table `ballast_lab`, a netem
//! qdisc on its link), so `heal` removes them host by host and a removed host takes them along.

use anyhow::{Context, Result, bail};
use rustix::process::Signal;

use crate::net::{Host, Network};
use crate::process;
use crate::state::State;
use crate::tool;

const TABLE: &str = "ballast_lab";

/// Cuts `side` off from every other host, both ways. Hosts within `side` still reach each other.
pub fn partition(network: &Network, side: &[&Host]) -> Result<()> {
    let others: Vec<&Host> = network
        .hosts
        .iter()
        .filter(|h| !side.iter().any(|s| s.name == h.name))
        .collect();
    cut(side, &others)
}

/// Cuts `side` off from `others`, both ways: each host of `side` drops what it would send to,
/// and what it receives from, them. Every other path stays.
pub fn cut(side: &[&Host], others: &[&Host]) -> Result<()> {
    check_nft()?;
    if side.is_empty() || others.is_empty() {
        bail!("a partition needs hosts on both sides");
    }
    if let Some(both) = side
        .iter()
        .find(|h| others.iter().any(|o| o.name == h.name))
    {
        bail!("{} cannot be on both sides of a partition", both.name);
    }
    let set = address_set(others);
    for host in side {
        add_rules(
            host,
            &[
                format!("add rule inet {TABLE} input ip saddr {set} drop"),
                format!("add rule inet {TABLE} output ip daddr {set} drop"),
            ],
        )?;
    }
    Ok(())
}

/// Drops what `from` sends to `to`, one way: `to`'s replies and its own packets still flow.
pub fn partition_one_way(from: &Host, to: &[&Host]) -> Result<()> {
    check_nft()?;
    let set = address_set(to);
    add_rules(
        from,
        &[format!("add rule inet {TABLE} output ip daddr {set} drop")],
    )
}

/// Drops `percent` of the packets `host` sends and of those it receives, each at random.
pub fn loss(host: &Host, percent: u8) -> Result<()> {
    check_nft()?;
    if percent == 0 || percent > 100 {
        bail!("loss: a percentage from 1 to 100");
    }
    add_rules(
        host,
        &[
            format!(
                "add rule inet {TABLE} input meta iifname eth0 numgen random mod 100 < {percent} drop"
            ),
            format!(
                "add rule inet {TABLE} output meta oifname eth0 numgen random mod 100 < {percent} drop"
            ),
        ],
    )
}

/// Holds every packet `host` sends for `delay_ms` (± `jitter_ms`).
pub fn delay(host: &Host, delay_ms: u32, jitter_ms: u32) -> Result<()> {
    let delay = format!("{delay_ms}ms");
    let jitter = format!("{jitter_ms}ms");
    let mut args = vec![
        "-n",
        &host.netns,
        "qdisc",
        "replace",
        "dev",
        "eth0",
        "root",
        "netem",
        "delay",
        &delay,
    ];
    if jitter_ms > 0 {
        args.push(&jitter);
    }
    tool::run("tc", &args).map(drop).map_err(|error| {
        if error.to_string().contains("qdisc kind is unknown") {
            anyhow::anyhow!(
                "this kernel has no netem (CONFIG_NET_SCH_NETEM is not set), which `delay` \
                 needs; partitions, loss and pauses work without it"
            )
        } else {
            error
        }
    })
}

/// Removes every network fault from `hosts`.
pub fn heal(hosts: &[&Host]) -> Result<()> {
    for host in hosts {
        // A host without faults has no table and no qdisc: nothing to remove is not an error.
        let _ = tool::run(
            "ip",
            &[
                "netns",
                "exec",
                &host.netns,
                "nft",
                "delete",
                "table",
                "inet",
                TABLE,
            ],
        );
        let _ = tool::run(
            "tc",
            &["-n", &host.netns, "qdisc", "del", "dev", "eth0", "root"],
        );
    }
    Ok(())
}

/// Stops every process on `host` where it stands (SIGSTOP).
pub fn pause(host: &Host) -> Result<()> {
    signal_host(host, Signal::STOP)
}

/// Continues a paused host (SIGCONT).
pub fn resume(host: &Host) -> Result<()> {
    signal_host(host, Signal::CONT)
}

/// Ends every process on `host` at once (SIGKILL): a crash, not a clean stop.
pub fn kill(host: &Host) -> Result<()> {
    signal_host(host, Signal::KILL)
}

/// Starts `host`'s programs again as the lab first started them; returns what each printed
/// when ready.
pub fn restart(state: &State, host: &Host, logs: &std::path::Path) -> Result<Vec<String>> {
    if !host.pids().is_empty() {
        bail!("{} still runs; `kill` it first", host.name);
    }
    let mut ready = Vec::new();
    for launch in state.launches_of(&host.name) {
        let (_, out) = process::start(host, launch, logs)?;
        ready.push(out.trim().to_owned());
    }
    if ready.is_empty() {
        bail!("nothing runs on {}", host.name);
    }
    Ok(ready)
}

fn signal_host(host: &Host, signal: Signal) -> Result<()> {
    let pids = host.pids();
    if pids.is_empty() {
        bail!("nothing runs on {}", host.name);
    }
    process::signal_all(&pids, signal);
    Ok(())
}

/// Adds `rules` to `host`'s table, making the table and its chains first if need be.
fn add_rules(host: &Host, rules: &[String]) -> Result<()> {
    let mut script = format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
         add chain inet {TABLE} output {{ type filter hook output priority 0; policy accept; }}\n"
    );
    for rule in rules {
        script.push_str(rule);
        script.push('\n');
    }
    tool::run_with_input(
        "ip",
        &["netns", "exec", &host.netns, "nft", "-f", "-"],
        Some(&script),
    )
    .map(drop)
    .with_context(|| format!("adding a fault on {}", host.name))
}

/// `{ 198.18.0.51, 198.18.0.52 }`, as nft writes an anonymous set.
fn address_set(hosts: &[&Host]) -> String {
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.to_string()).collect();
    format!("{{ {} }}", addresses.join(", "))
}

fn check_nft() -> Result<()> {
    if tool::installed("nft") {
        Ok(())
    } else {
        bail!("network faults need `nft` (Debian's nftables package)")
    }
}
