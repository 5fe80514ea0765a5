//! One module per subcommand of `ballast`.

mod admin_client;
mod algorithm_args;
pub(crate) mod backend;
pub(crate) mod balance;
pub(crate) mod bench;
pub(crate) mod control;
mod detect;
pub(crate) mod dns;
mod dns_bench;
mod dns_peers;
pub(crate) mod echo;
pub(crate) mod fleet;
mod harness;
pub(crate) mod lb;
pub(crate) mod lock;
mod lock_bench;
mod lock_check;
pub(crate) mod pool;
mod propagation;
pub(crate) mod queue;
mod supervise;
mod table;
pub(crate) mod up;
mod up_display;

/// This process as people read it in lock values and leader names: `HOST/PID`.
pub(crate) fn host_and_pid() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{}/{}", host.trim(), std::process::id())
}

/// `name` on the PATH, or else in the directories `also` (Debian puts servers such as Knot and
/// NSD in sbin directories a user's PATH may leave out).
pub(crate) fn find_program(name: &str, also: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
