//! Running one plugin version: a pre-instantiated component plus a small pool of warm instances, and the call
//! wrapper that applies fuel, deadline and memory limits and turns traps into [`CallError`]s.
//!
//! Instance reuse is a measured decision (docs/decisions/0002-plugin-instance-reuse.md, `aragora-cp bench
//! plugins`): a fresh store + instance + `init` per call costs tens of microseconds, more than the whole goal for
//! a 10-candidate selection, while a warm instance is a few microseconds. So an instance serves many calls, and
//! is dropped after any failed call (its state may be corrupt) and when its memory has grown by more than half of
//! what its cap left it after start-up (so one huge call does not pin memory for ever; counted from start-up
//! because an interpreter starts with 9 to 13 MiB). Plugins must not rely on state across calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap};

use super::CallError;
use super::runtime::{CallLimits, PluginRuntime};
use super::sandbox::{HostState, LogTail};

/// Warm instances kept per plugin version; more concurrent callers than this instantiate and drop extras.
const MAX_WARM_INSTANCES: usize = 16;

/// Longest deadline of a call made on a runtime worker's own thread (the defaults of strategies and policies, 5
/// ms, are below it; probes, at 1 s, are not).
pub const INLINE_CALL_LIMIT: std::time::Duration = std::time::Duration::from_millis(10);

/// One of the three generated world bindings (`Strategy`, `Policy`, `HealthProbe`).
pub trait World: Sized + Send + 'static {
    /// The bindings' pre-instantiated form.
    type Pre: Send + Sync + 'static;

    /// Type-checks the component's exports against the world.
    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;

    /// Instantiates into `store`.
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;

    /// Calls the world's `init(config)`.
    fn init(&self, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>>;
}

/// What a successful call returns besides its value.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CallReport {
    /// Fuel the call burned.
    pub fuel_used: u64,
    /// The instance's linear memory after the call (all memories), in bytes: it only grows, so this is the peak.
    pub peak_memory_bytes: usize,
    /// Wall time of the call, including taking an instance (and instantiating one if none was warm).
    #[serde(serialize_with = "serialize_micros", rename = "wall_time_us")]
    pub wall_time: Duration,
    /// What the guest printed to stdout and stderr (at most 4 KiB).
    pub log: String,
    /// Whether the call had to instantiate (and `init`) a fresh instance.
    pub fresh_instance: bool,
}

/// What one fresh instance took to start: instantiation plus `init` (what a call would pay without a warm one).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StartUp {
    /// Wall time of instantiation and `init`.
    #[serde(serialize_with = "serialize_micros", rename = "time_us")]
    pub time: Duration,
    /// The instance's linear memory once started, in bytes.
    pub memory_bytes: usize,
}

/// Instances made ready when a version loads: one per core the calls may come from, at most four (an interpreted
/// plugin's instance holds 9 to 13 MiB).
pub fn instances_warmed_at_load() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)
}

fn serialize_micros<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64() * 1e6)
}

struct Warm<W> {
    store: Store<HostState>,
    bindings: W,
    /// Linear memory once started: growth is counted from here.
    started_with: usize,
}

impl<W> Warm<W> {
    /// Whether the instance may serve more calls: it has not grown by more than half of what its cap left it.
    fn fit_for_reuse(&self, limits: &CallLimits) -> bool {
        let headroom = limits.memory_bytes.saturating_sub(self.started_with);
        self.store.data().limiter.memory_in_use <= self.started_with + headroom / 2
    }
}

/// A plugin version ready to be called from any thread.
pub struct Sandbox<W: World> {
    runtime: PluginRuntime,
    pre: W::Pre,
    digest: [u8; 32],
    config_json: String,
    limits: CallLimits,
    reuse: bool,
    warm: Mutex<Vec<Warm<W>>>,
    /// Where every call's output goes, whether the call succeeded or not (a panic message matters most).
    tail: Arc<LogTail>,
}

impl<W: World> Sandbox<W> {
    /// Links and type-checks `component` for world `W`. `config_json` is passed to every instance's `init`.
    pub fn new(
        runtime: &PluginRuntime,
        component: &wasmtime::component::Component,
        digest: [u8; 32],
        config_json: String,
        limits: CallLimits,
        tail: Arc<LogTail>,
    ) -> Result<Self, String> {
        let pre = runtime.linker().instantiate_pre(component).map_err(|e| format!("{e:#}"))?;
        let pre = W::pre(pre).map_err(|e| format!("{e:#}"))?;
        Ok(Sandbox {
            runtime: runtime.clone(),
            pre,
            digest,
            config_json,
            limits,
            reuse: runtime.reuse_instances(),
            warm: Mutex::new(Vec::new()),
            tail,
        })
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// Runs `f` on an instance under the call limits, with the guest's clock at `now_ms` and its randomness
    /// seeded by `seed`. `f` returns the guest's answer, already checked: an `Err(CallError)` from it (a bad
    /// index, a decision that does not fit) fails the call like a trap does, and the instance is not reused.
    ///
    /// A call runs on the caller's thread, a runtime worker included (the sandbox's I/O never waits, see
    /// `ready_io.rs`): handing a few microseconds of guest code to another thread cost more than the call. A
    /// version whose deadline is longer than [`INLINE_CALL_LIMIT`] may hold its thread that long, so on a
    /// multi-thread runtime it runs inside `block_in_place`, and the worker's other tasks move on meanwhile.
    pub fn call<R: Send>(
        &self,
        now_ms: u64,
        seed: u64,
        f: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<Result<R, CallError>> + Send,
    ) -> Result<(R, CallReport), CallError> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread && self.limits.deadline > INLINE_CALL_LIMIT {
            tokio::task::block_in_place(|| self.call_here(now_ms, seed, f))
        } else {
            self.call_here(now_ms, seed, f)
        }
    }

    fn call_here<R>(
        &self,
        now_ms: u64,
        seed: u64,
        f: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<Result<R, CallError>>,
    ) -> Result<(R, CallReport), CallError> {
        let started = Instant::now();
        let reused = if self.reuse { self.warm.lock().pop() } else { None };
        let fresh_instance = reused.is_none();
        let mut warm = match reused {
            Some(mut warm) => {
                // A fresh instance keeps what `init` printed in this call's log; a reused one starts clean.
                warm.store.data_mut().prepare_call(now_ms, seed);
                warm
            }
            None => self.instantiate(now_ms, seed)?,
        };
        self.arm(&mut warm.store);
        let outcome = f(&warm.bindings, &mut warm.store);
        let wall_time = started.elapsed();
        let fuel_left = warm.store.get_fuel().unwrap_or(0);
        let state = warm.store.data_mut();
        let report = CallReport {
            fuel_used: self.limits.fuel.saturating_sub(fuel_left),
            peak_memory_bytes: state.limiter.memory_in_use,
            wall_time,
            log: state.take_log(),
            fresh_instance,
        };
        self.tail.record(&report.log);
        match outcome {
            Ok(Ok(value)) => {
                if self.reuse && warm.fit_for_reuse(&self.limits) {
                    let mut pool = self.warm.lock();
                    if pool.len() < MAX_WARM_INSTANCES {
                        pool.push(warm);
                    }
                }
                Ok((value, report))
            }
            // In both failure cases the instance is dropped with `warm`: after a trap its memory may be
            // inconsistent, and a guest that answered nonsense may have done so because of its state.
            // An engine that catches a refused grow answers an error of its own ("out of memory"): name the cap.
            Ok(Err(_)) if warm.store.data().limiter.denied => {
                Err(CallError::Memory { limit_bytes: self.limits.memory_bytes })
            }
            Ok(Err(bad_answer)) => Err(bad_answer),
            Err(error) => Err(self.classify(error, &warm.store)),
        }
    }

    /// Starts fresh instances until `count` are warm (at least one, which is measured), off the request path, so
    /// that calls do not pay for start-up: a Python or JavaScript instance takes about a millisecond to
    /// instantiate and `init`, a Rust one tens of microseconds. The version already passed its trial call, so a
    /// failure here (a deadline missed on a busy machine) only stops the warming: callers start instances as they
    /// always could. Answers what the measured instance took, if one started.
    pub fn warm_up(&self, count: usize) -> Option<StartUp> {
        let count = count.min(MAX_WARM_INSTANCES);
        let mut measured = None;
        loop {
            let started = Instant::now();
            let Ok(mut warm) = self.instantiate(0, 0) else { return measured };
            let time = started.elapsed();
            // What `init` printed, once: every warmed instance would print the same.
            let log = warm.store.data_mut().take_log();
            if measured.is_none() {
                self.tail.record(&log);
            }
            let first = *measured.get_or_insert(StartUp { time, memory_bytes: warm.started_with });
            let mut pool = self.warm.lock();
            if !self.reuse || pool.len() >= count {
                return Some(first);
            }
            pool.push(warm);
        }
    }

    /// Builds a store with this version's limits, instantiates and runs `init`.
    fn instantiate(&self, now_ms: u64, seed: u64) -> Result<Warm<W>, CallError> {
        let state = HostState::new(self.digest, self.limits.memory_bytes, self.limits.table_elements);
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        store.data_mut().prepare_call(now_ms, seed);
        self.arm(&mut store);
        let bindings = W::instantiate(&self.pre, &mut store).map_err(|e| self.classify(e, &store))?;
        // The deadline is for the guest's own work: host-side instantiation (mapping memory, building the WASI
        // context) must not eat into `init`'s time on a busy machine. Fuel still bounds everything the guest ran.
        self.arm(&mut store);
        let failed = match bindings.init(&mut store, &self.config_json) {
            Ok(Ok(())) => {
                // A grow refused during `init` must not make the next call's answer look like a memory failure.
                let state = store.data_mut();
                state.limiter.denied = false;
                let started_with = state.limiter.memory_in_use;
                return Ok(Warm { store, bindings, started_with });
            }
            Ok(Err(message)) => CallError::Init(message),
            Err(error) => self.classify(error, &store),
        };
        // What `init` printed before failing is the author's best clue.
        self.tail.record(&store.data_mut().take_log());
        Err(failed)
    }

    /// Gives the next guest step its full fuel and a fresh deadline.
    fn arm(&self, store: &mut Store<HostState>) {
        store.set_fuel(self.limits.fuel).expect("fuel is enabled on the engine");
        let ticks = self.limits.deadline_ticks();
        store.set_epoch_deadline(ticks);
        self.runtime.deadline_armed(ticks);
    }

    fn classify(&self, error: wasmtime::Error, store: &Store<HostState>) -> CallError {
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => CallError::OutOfFuel { fuel: self.limits.fuel },
            Some(Trap::Interrupt) => CallError::Deadline { deadline: self.limits.deadline },
            // A refused memory grow usually surfaces as an abort in the guest's allocator: name the cause.
            _ if store.data().limiter.denied => CallError::Memory { limit_bytes: self.limits.memory_bytes },
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Trap(first_line(&format!("{error:#}"))),
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).to_string()
}
