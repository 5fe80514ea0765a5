//! `ballast lab`: the whole system spread over hosts on one Linux machine, and faults between
//! them. On one loopback interface a failure is a refused connection; on a network, packets
//! vanish without a reset, a minority is cut off, a host stalls. The lab gives each part its own
//! network namespace ("host") with its own address on a private bridge, so that what Ballast
//! claims about failures can be shown with real packets dropped, and measured.
//!
//! Nothing is routed outside: the bridge has no address in the machine's own namespace, and
//! the hosts' addresses (198.18.0.0/24, the benchmarking range) exist only inside namespaces the
//! lab made. Everything it makes is named in its state file, so `ballast lab down` (or the next
//! `up` on the same directory, after a crash) removes it.

#![forbid(unsafe_code)]

pub mod check;
pub mod client;
pub mod fault;
pub mod net;
pub mod process;
pub mod scenario;
pub mod state;
pub mod system;
mod tool;
mod wait;

pub use check::{Outcome, Verdict};
pub use net::{Host, Network};
pub use system::{Db, Lab, Shape};
