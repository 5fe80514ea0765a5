//! Keeping a lease alive in the background: extended every third of its TTL (or as asked), with
//! an optional cap on the number of renewals, and a "lost" signal that fires the moment a renewal
//! fails or the validity runs out, so that the holder stops its work.
//!
//! ```no_run
//! # async fn demo(lease: ballast_lock::Lease) {
//! let held = lease.keep_alive(ballast_lock::Renewal::default());
//! tokio::select! {
//!     reason = held.lost() => eprintln!("stop: {reason}"),
//!     () = async { /* the work, passing held.fencing_token() to each write */ } => {}
//! }
//! held.release().await;
//! # }
//! ```

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lease::{Lease, Released};

/// How a held lease is renewed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Renewal {
    /// Between renewals; `None`: a third of the TTL.
    pub every: Option<Duration>,
    /// Stop renewing after this many (the lease then runs out, and `lost` fires); `None`: renew
    /// until released.
    pub max_renewals: Option<u32>,
}

/// A lease renewed in the background. Dropping it stops the renewals (the lock then expires
/// with its TTL); [`release`](Self::release) frees it at once.
#[derive(Debug)]
pub struct Held {
    name: String,
    token: u64,
    lost: watch::Receiver<Option<String>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Lease>>,
}

impl Lease {
    /// Renews this lease in the background as `renewal` says.
    pub fn keep_alive(self, renewal: Renewal) -> Held {
        let (lost_tx, lost) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        let name = self.name().to_owned();
        let token = self.fencing_token();
        let task = tokio::spawn(renew(self, renewal, lost_tx, stop_rx));
        Held {
            name,
            token,
            lost,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl Held {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of the grant.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Why the lease was lost, once it is.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves, with the reason, when the lease is lost.
    pub fn lost(&self) -> impl Future<Output = String> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            match lost.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // The renewal task ended without a verdict: released, or the runtime is going.
                Err(_) => "the renewal stopped".to_owned(),
            }
        }
    }

    /// Stops renewing and releases the lock on every node.
    pub async fn release(mut self) -> Released {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(lease) => lease.release().await,
                Err(_) => Released::default(),
            },
            None => Released::default(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn renew(
    mut lease: Lease,
    renewal: Renewal,
    lost: watch::Sender<Option<String>>,
    mut stop: oneshot::Receiver<()>,
) -> Lease {
    let every = renewal.every.unwrap_or(lease.ttl() / 3);
    let mut renewed = 0u32;
    let verdict = loop {
        let renewing = renewal.max_renewals.is_none_or(|max| renewed < max);
        let next = if renewing {
            (Instant::now() + every).min(lease.valid_until())
        } else {
            lease.valid_until()
        };
        tokio::select! {
            _ = &mut stop => return lease,
            () = tokio::time::sleep_until(next) => {}
        }
        if !lease.is_valid() {
            break "its validity ran out".to_owned();
        }
        if renewing {
            match lease.extend().await {
                Ok(()) => renewed += 1,
                Err(error) => break format!("renewal failed: {error}"),
            }
        }
    };
    tracing::warn!(lock = lease.name(), %verdict, "lock lost");
    let _ = lost.send(Some(verdict));
    let _ = stop.await;
    lease
}
