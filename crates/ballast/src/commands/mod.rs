//! One module per subcommand of `ballast`.

mod admin_client;
mod algorithm_args;
pub(crate) mod backend;
pub(crate) mod balance;
pub(crate) mod control;
pub(crate) mod dns;
pub(crate) mod echo;
pub(crate) mod fleet;
pub(crate) mod lab;
pub(crate) mod lb;
pub(crate) mod lock;
pub(crate) mod pool;
pub(crate) mod route;
mod supervise;
pub(crate) mod up;
mod up_display;

/// This process as people read it in lock values and leader names: `HOST/PID`.
pub(crate) fn host_and_pid() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{}/{}", host.trim(), std::process::id())
}
