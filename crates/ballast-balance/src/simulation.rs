//! A discrete-event simulation of one LB in front of backends whose response times differ:
//! what `ballast balance simulate --service-ms …` runs to show why load-aware algorithms win.
//!
//! `concurrency` clients each send a request, wait for its response and send the next (a closed
//! loop). Each backend serves `slots` requests at a time, first come first served, with
//! exponentially distributed service times around its mean; the rest wait in its queue. The LB's
//! picker sees each backend's in-flight count (queued + in service), as a real LB would, and the
//! latency a client sees is queueing plus service. Time is virtual: a run takes milliseconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use crate::{Algorithm, Backend, InFlight, Picker, hash_key};

/// The keys a run sends, raw (before [`hash_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Uniformly random 64-bit keys, as from many clients.
    Random,
    /// 0, 1, 2, …: easy to follow by eye, and to compare across runs.
    Sequential,
}

impl Keys {
    /// `count` raw keys; random keys depend only on `seed`.
    pub fn generate(self, count: usize, seed: u64) -> Vec<u64> {
        match self {
            Self::Sequential => (0..count as u64).collect(),
            Self::Random => {
                let mut rng = fastrand::Rng::with_seed(seed);
                (0..count).map(|_| rng.u64(..)).collect()
            }
        }
    }
}

/// What the clients send and how the backends behave.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Requests in flight from clients at any time.
    pub concurrency: usize,
    /// Mean service time of each backend, by index.
    pub service_times: Vec<Duration>,
    /// Requests each backend serves at once.
    pub slots: usize,
    /// Seeds service times (and, through `fastrand::seed`, the pickers' random choices).
    pub seed: u64,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The backend of each request, in the order the requests were sent.
    pub assignments: Vec<usize>,
    /// Latency of each request, in the same order.
    pub latencies: Vec<Duration>,
}

impl Outcome {
    /// Mean latency over `picked` requests (all when `None`).
    pub fn mean(&self, backend: Option<usize>) -> Duration {
        let chosen: Vec<Duration> = self.latencies_of(backend);
        if chosen.is_empty() {
            return Duration::ZERO;
        }
        chosen.iter().sum::<Duration>() / chosen.len() as u32
    }

    /// The `q` quantile (0.0..=1.0) of latency, of one backend's requests or of all.
    pub fn quantile(&self, backend: Option<usize>, q: f64) -> Duration {
        let mut chosen = self.latencies_of(backend);
        if chosen.is_empty() {
            return Duration::ZERO;
        }
        chosen.sort_unstable();
        let rank = ((chosen.len() as f64 * q).ceil() as usize).clamp(1, chosen.len());
        chosen[rank - 1]
    }

    fn latencies_of(&self, backend: Option<usize>) -> Vec<Duration> {
        self.latencies
            .iter()
            .zip(&self.assignments)
            .filter(|(_, b)| backend.is_none_or(|want| want == **b))
            .map(|(latency, _)| *latency)
            .collect()
    }
}

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimulationError {
    /// The picker found no backend for a request.
    #[error("no backend takes traffic")]
    NoBackend,
    /// A workload field out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// A request waiting for, or in, service.
struct Request {
    index: usize,
    arrived: Duration,
    _in_flight: InFlight,
}

#[derive(Default)]
struct BackendState {
    busy: usize,
    queue: VecDeque<Request>,
}

/// Runs `keys.len()` requests through `picker` over `backends`.
pub fn run(
    picker: &Picker,
    algorithm: &Algorithm,
    backends: &[Backend],
    keys: &[u64],
    workload: &Workload,
) -> Result<Outcome, SimulationError> {
    if workload.concurrency == 0 {
        return Err(SimulationError::Invalid("concurrency must be at least 1"));
    }
    if workload.slots == 0 {
        return Err(SimulationError::Invalid("slots must be at least 1"));
    }
    if workload.service_times.len() != backends.len() {
        return Err(SimulationError::Invalid("one service time per backend"));
    }
    fastrand::seed(workload.seed);
    let decay = match algorithm {
        Algorithm::LeastRequest {
            peak_ewma: Some(decay),
        } => *decay,
        _ => Algorithm::DEFAULT_PEAK_EWMA_DECAY,
    };
    let mut sim = Simulation {
        picker,
        backends,
        keys,
        workload,
        decay,
        rng: fastrand::Rng::with_seed(workload.seed ^ 0x5e41_ce71),
        state: (0..backends.len())
            .map(|_| BackendState::default())
            .collect(),
        in_service: (0..keys.len()).map(|_| None).collect(),
        completions: BinaryHeap::new(),
        outcome: Outcome {
            assignments: Vec::with_capacity(keys.len()),
            latencies: vec![Duration::ZERO; keys.len()],
        },
        sent: 0,
    };
    for _ in 0..workload.concurrency {
        sim.send(Duration::ZERO)?;
    }
    while let Some(Reverse((now, request, backend))) = sim.completions.pop() {
        sim.complete(now, request, backend);
        sim.send(now)?;
    }
    Ok(sim.outcome)
}

struct Simulation<'a> {
    picker: &'a Picker,
    backends: &'a [Backend],
    keys: &'a [u64],
    workload: &'a Workload,
    decay: Duration,
    rng: fastrand::Rng,
    state: Vec<BackendState>,
    /// By request index: the request being served, which keeps it counted in flight.
    in_service: Vec<Option<Request>>,
    /// (finish time, request, backend), earliest first.
    completions: BinaryHeap<Reverse<(Duration, usize, usize)>>,
    outcome: Outcome,
    sent: usize,
}

impl Simulation<'_> {
    /// Sends the next request, if any are left, at time `now`.
    fn send(&mut self, now: Duration) -> Result<(), SimulationError> {
        let Some(&key) = self.keys.get(self.sent) else {
            return Ok(());
        };
        let backend = self
            .picker
            .pick(hash_key(&key.to_le_bytes()))
            .ok_or(SimulationError::NoBackend)?;
        self.outcome.assignments.push(backend);
        let request = Request {
            index: self.sent,
            arrived: now,
            _in_flight: self.backends[backend].load().start(),
        };
        self.sent += 1;
        let state = &mut self.state[backend];
        if state.busy < self.workload.slots {
            state.busy += 1;
            self.serve(now, backend, request);
        } else {
            state.queue.push_back(request);
        }
        Ok(())
    }

    fn serve(&mut self, now: Duration, backend: usize, request: Request) {
        let mean = self.workload.service_times[backend].as_secs_f64();
        let service = Duration::from_secs_f64(-mean * (1.0 - self.rng.f64()).ln());
        self.completions
            .push(Reverse((now + service, request.index, backend)));
        let index = request.index;
        self.in_service[index] = Some(request);
    }

    fn complete(&mut self, now: Duration, index: usize, backend: usize) {
        if let Some(request) = self.in_service[index].take() {
            let latency = now - request.arrived;
            self.outcome.latencies[index] = latency;
            self.backends[backend]
                .load()
                .observe_latency(latency, now, self.decay);
        }
        match self.state[backend].queue.pop_front() {
            Some(next) => self.serve(now, backend, next),
            None => self.state[backend].busy -= 1,
        }
    }
}
