//! What keeps a pool's backends from being sent more than they can take, as HAProxy's `maxconn`
//! with its queue and Envoy's circuit breakers and retry budgets do:
//!
//! - **A cap per backend** (`max_requests`): requests in flight on one backend, counted over
//!   every worker by the backend's own load counter and taken with a compare-and-swap, so the cap
//!   holds exactly, never overshot by a race. A backend at its cap is passed over for another.
//! - **A cap on connections per backend** (`max_connections`, HTTP/1.1 and TCP): a connection
//!   carries one request at a time, so the cap bounds requests in flight as `max_requests`
//!   does; and since each worker keeps its own idle connections, a request that needs a new one
//!   while the backend's connections are all open asks every worker to close an idle one
//!   ([`Connections::open`]), as HAProxy closes idle server connections to stay under `maxconn`.
//! - **A bounded queue per pool** (`queue_size`, `queue_timeout`): when every backend is at its
//!   cap, a request waits for the first to free a slot; past the queue's size, or after waiting
//!   its timeout, the client gets 503 with `Retry-After` rather than a backend getting more.
//! - **A retry budget**: retries in progress may be at most a fraction of the pool's requests in
//!   flight (20%), or a floor (3), so a failing pool is not sent three times its load by retries.
//!
//! With none of it configured, a request pays one branch (no cap: the picker's choice is
//! taken as before) and holds nothing more than its in-flight count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ballast_balance::InFlight;
use tokio::sync::{Notify, watch};

use crate::key::Affinity;
use crate::state::{Chosen, PoolSnapshot, PoolState};

/// A pool's queue: requests waiting for a backend under its cap.
#[derive(Debug)]
pub(crate) struct Queue {
    size: usize,
    timeout: Duration,
    waiting: AtomicUsize,
    /// Woken each time a request of the pool ends while some wait.
    freed: Notify,
}

impl Queue {
    pub(crate) fn new(size: u32, timeout: Duration) -> Self {
        Self {
            size: size as usize,
            timeout,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Takes a place in the queue, if one is free.
    fn enter<'q>(&'q self, pool: &'q PoolState) -> Option<Place<'q>> {
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.size).then_some(n + 1)
            })
            .ok()?;
        pool.counters.queued(1);
        Some(Place { queue: self, pool })
    }
}

/// A request's place in a queue, given up when it is dropped.
struct Place<'q> {
    queue: &'q Queue,
    pool: &'q PoolState,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::Relaxed);
        self.pool.counters.queued(-1);
    }
}

/// Why no backend took a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// None takes traffic (or every one was tried).
    NoBackend,
    /// Every one is at its cap, and the queue was full or the wait too long.
    Overloaded,
}

/// A request's hold on its backend for as long as it uses it: counted in the backend's load
/// (and as a retry, if it is one); when it ends, a request waiting in the pool's queue is woken.
#[derive(Debug)]
pub(crate) struct Held {
    in_flight: Option<InFlight>,
    queue: Option<Arc<Queue>>,
    retrying: Option<Arc<AtomicUsize>>,
}

impl Held {
    /// `retry`: the hold counts against the pool's retry budget.
    fn new(in_flight: InFlight, pool: &PoolState, retry: bool) -> Self {
        let retrying = retry.then(|| {
            pool.retrying.fetch_add(1, Ordering::Relaxed);
            Arc::clone(&pool.retrying)
        });
        Self {
            in_flight: Some(in_flight),
            queue: pool.queue.clone(),
            retrying,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The slot is free before anyone is told it is.
        drop(self.in_flight.take());
        if let Some(retrying) = &self.retrying {
            retrying.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(queue) = &self.queue
            && queue.waiting.load(Ordering::Relaxed) > 0
        {
            queue.freed.notify_one();
        }
    }
}

/// A backend of `pool` for a request with `affinity` that has not been to `tried`, and its hold:
/// the backend its sticky cookie names if that one takes traffic and is under its cap, else the
/// picker's choice, or where that one is at its cap, another under it, or after a wait in the
/// queue, the first to free a slot. `retry`: this is a retry (see [`retry_allowed`]).
pub(crate) async fn admit(
    pool: &PoolSnapshot,
    affinity: Affinity,
    tried: &[usize],
    retry: bool,
) -> Result<(usize, Held), Refusal> {
    let state = &*pool.state;
    let limit = state.protection.in_flight_cap().map(u64::from);
    if let Some(index) = affinity.sticky.and_then(|token| pool.stuck_to(token))
        && !tried.contains(&index)
    {
        let load = state.backends[index].balance.load();
        let in_flight = match limit {
            None => Some(load.start()),
            Some(limit) => load.try_start(limit),
        };
        if let Some(in_flight) = in_flight {
            return Ok((index, Held::new(in_flight, state, retry)));
        }
    }
    let key = affinity.key;
    let Some(limit) = limit else {
        let index = pool.choose(key, tried).ok_or(Refusal::NoBackend)?;
        let in_flight = state.backends[index].balance.load().start();
        return Ok((index, Held::new(in_flight, state, retry)));
    };
    let admitted = |chosen| match chosen {
        Chosen::Admitted(index, in_flight) => Ok(Some((index, Held::new(in_flight, state, retry)))),
        Chosen::Nothing => Err(Refusal::NoBackend),
        Chosen::AllBusy => Ok(None),
    };
    if let Some(admitted) = admitted(pool.choose_within(limit, key, tried))? {
        return Ok(admitted);
    }
    let queue = state.queue.as_deref().ok_or(Refusal::Overloaded)?;
    let place = queue.enter(state).ok_or(Refusal::Overloaded)?;
    let started = Instant::now();
    loop {
        // Listening before looking again, so a slot freed in between is not missed.
        let mut freed = std::pin::pin!(queue.freed.notified());
        freed.as_mut().enable();
        if let Some(admitted) = admitted(pool.choose_within(limit, key, tried))? {
            drop(place);
            state.counters.waited(started.elapsed().as_secs_f64());
            return Ok(admitted);
        }
        let left = queue
            .timeout
            .checked_sub(started.elapsed())
            .ok_or(Refusal::Overloaded)?;
        if tokio::time::timeout(left, freed).await.is_err() {
            return Err(Refusal::Overloaded);
        }
    }
}

/// The connections the LB holds open to one backend, busy or idle, over every worker (kept
/// across rebuilds, counted whether or not the pool caps them, so a cap set later holds at once).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: AtomicU32,
    /// Requests waiting for room under the cap: until none do, idle connections to the
    /// backend are closed rather than kept.
    wanted: AtomicU32,
    /// Woken each time one of them closes while some wait.
    closed: Notify,
}

impl Connections {
    /// Room for one more connection under `cap` (no cap: at once). At the cap, every worker is
    /// asked, through `reap`, to close an idle connection to the backend; the request waits for
    /// one to close, at most `timeout` (`None`: it did not, the backend is at its cap).
    pub(crate) async fn open(
        self: &Arc<Self>,
        cap: Option<u32>,
        reap: &watch::Sender<u64>,
        timeout: Duration,
    ) -> Option<Opened> {
        let Some(cap) = cap else {
            return Some(self.opened());
        };
        let started = Instant::now();
        let mut wanting = None;
        loop {
            // Listening before trying, so a connection closed in between is not missed.
            let mut closed = std::pin::pin!(self.closed.notified());
            closed.as_mut().enable();
            let room = self
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                });
            if room.is_ok() {
                return Some(Opened(Arc::clone(self)));
            }
            if wanting.is_none() {
                self.wanted.fetch_add(1, Ordering::Relaxed);
                wanting = Some(Wanting(self));
            }
            reap.send_modify(|round| *round = round.wrapping_add(1));
            let left = timeout.checked_sub(started.elapsed())?;
            tokio::time::timeout(left, closed).await.ok()?;
        }
    }

    /// One more connection, counted without a cap (a TCP session's: those are capped as they
    /// are admitted).
    pub(crate) fn opened(self: &Arc<Self>) -> Opened {
        self.open.fetch_add(1, Ordering::Relaxed);
        Opened(Arc::clone(self))
    }

    /// How many requests wait for one of the backend's connections to close.
    pub(crate) fn wanted(&self) -> u32 {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub(crate) fn count(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }
}

/// A request's claim to room under the cap while it waits, given up when it is dropped.
struct Wanting<'c>(&'c Connections);

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.wanted.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection's place under its backend's cap, given back when the connection closes.
#[derive(Debug)]
pub(crate) struct Opened(Arc<Connections>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.closed.notify_one();
    }
}

/// Whether the pool's retry budget allows another retry now: retries in progress below the
/// budget's share of the requests in flight, or below its floor.
pub(crate) fn retry_allowed(pool: &PoolState) -> bool {
    let protection = &pool.protection;
    let in_flight: u64 = pool
        .backends
        .iter()
        .map(|b| b.balance.load().in_flight())
        .sum();
    let budget = ((in_flight as f64 * protection.retry_budget) as usize)
        .max(protection.retry_budget_min as usize);
    pool.retrying.load(Ordering::Relaxed) < budget
}
