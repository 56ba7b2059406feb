//! The wasmtime side of plugins: one `Engine` and one `Linker` per process, compilation (once per component
//! version, one at a time, with wasmtime's on-disk cache), inspection (world and imports) and call limits.
//!
//! Lifetimes, from longest to shortest:
//! - `Engine` + `Linker` + the epoch ticker: the process (`PluginRuntime`, cheap to clone).
//! - `Component` + `InstancePre`: one plugin version, built off the request path by `compile` and kept in its
//!   [`Sandbox`](super::instance::Sandbox) until the version is swapped out and its last in-flight call ends.
//! - `Store` + instance: short-lived, owned by the sandbox's pool; reused for a bounded number of calls and thrown
//!   away after any trap (see `instance.rs` for the measured reasons).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine};

use super::bindings::{EVALUATOR_EXPORT, PROBER_EXPORT, SELECTOR_EXPORT};
use super::sandbox::{self, HostState};
use super::{LoadError, PluginKind};

/// Largest component accepted from a file or an upload unless the operator says otherwise
/// (`PLUGIN_MAX_COMPONENT_MIB`): a Python plugin is about 18 MiB (the interpreter and its standard library), a
/// JavaScript one about 12 MiB, a Rust one well under 1 MiB.
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Resource limits of one plugin call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CallLimits {
    /// Fuel units (roughly one per wasm instruction) a call may burn.
    pub fuel: u64,
    /// Wall-clock time a call may take, enforced through epoch interruption.
    #[serde(serialize_with = "serialize_millis", rename = "deadline_ms")]
    #[schema(value_type = f64)]
    pub deadline: Duration,
    /// Largest linear memory of an instance, in bytes.
    pub memory_bytes: usize,
    /// Largest table of an instance, in elements.
    pub table_elements: usize,
}

fn serialize_millis<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64() * 1000.0)
}

impl CallLimits {
    /// The defaults of DESIGN §5: 1 M fuel, 16 MiB, 10 k table elements, 5 ms (strategies, policies) or 1 s
    /// (probes, which wait on nothing but may do more arithmetic over longer histories).
    pub fn default_for(kind: PluginKind) -> Self {
        CallLimits {
            fuel: 1_000_000,
            deadline: match kind {
                PluginKind::Strategy | PluginKind::Policy => Duration::from_millis(5),
                PluginKind::HealthProbe => Duration::from_secs(1),
            },
            memory_bytes: 16 * 1024 * 1024,
            table_elements: 10_000,
        }
    }

    /// The server maxima that cap the per-plugin values of manifests, unless the operator sets others
    /// (`PLUGIN_MAX_FUEL`, `PLUGIN_MAX_DEADLINE_MS`, `PLUGIN_MAX_MEMORY_MIB`).
    pub fn server_maxima() -> Self {
        CallLimits {
            fuel: 100_000_000,
            deadline: Duration::from_secs(5),
            memory_bytes: 64 * 1024 * 1024,
            table_elements: 100_000,
        }
    }

    /// Each limit lowered to at most the one in `maxima`.
    pub fn capped_by(self, maxima: CallLimits) -> Self {
        CallLimits {
            fuel: self.fuel.min(maxima.fuel),
            deadline: self.deadline.min(maxima.deadline),
            memory_bytes: self.memory_bytes.min(maxima.memory_bytes),
            table_elements: self.table_elements.min(maxima.table_elements),
        }
    }

    /// Epoch ticks from now until the deadline. One tick is added because the current tick is already partly
    /// over: a deadline of N ticks would otherwise allow anything between N-1 and N.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_nanos().max(1);
        (self.deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
    }
}

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Where wasmtime caches compiled code, keyed by the component's hash, wasmtime's version and the engine's
    /// configuration. Created with mode 0700. `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Limits for plugins whose manifest sets none, per kind.
    pub default_limits: fn(PluginKind) -> CallLimits,
    /// Upper bounds for the limits a manifest may set.
    pub maxima: CallLimits,
    /// Keep warm instances between calls (the default). Off only to measure the alternative.
    pub reuse_instances: bool,
    /// Largest component accepted, from a file or an upload.
    pub max_component_bytes: usize,
    /// Instances each version starts when it loads, so calls do not pay for start-up (see
    /// [`instances_warmed_at_load`](super::instance::instances_warmed_at_load)).
    pub warm_instances: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            default_limits: CallLimits::default_for,
            maxima: CallLimits::server_maxima(),
            reuse_instances: true,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            warm_instances: super::instance::instances_warmed_at_load(),
        }
    }
}

impl RuntimeOptions {
    /// The per-user cache directory (`$XDG_CACHE_HOME/aragora-cp/wasmtime`, else `~/.cache/...`).
    pub fn user_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("aragora-cp").join("wasmtime"))
    }
}

/// A compiled component whose world and imports passed inspection.
pub struct CompiledComponent {
    /// The compiled code.
    pub component: Component,
    /// The world the component targets, from its exports.
    pub kind: PluginKind,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    /// Raw sha256, which seeds the plugin's randomness.
    pub digest: [u8; 32],
    /// Names of the component's imports (all within the allowlist).
    pub imports: Vec<String>,
    /// Names of the component's exports.
    pub exports: Vec<String>,
    /// Size of the component in bytes.
    pub size: usize,
}

/// The process-wide plugin runtime; cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    options: RuntimeOptions,
    /// Compilation uses every core through wasmtime's parallel compilation; one at a time keeps a burst of uploads
    /// or file changes from starving the request path.
    compile_lock: Mutex<()>,
    /// Advances the epoch for call deadlines; its `Drop` stops the thread.
    ticker: EpochTicker,
}

impl PluginRuntime {
    /// Builds the engine (fuel and epoch interruption on), the linker and the epoch ticker thread.
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true).wasm_component_model(true);
        if let Some(dir) = &options.cache_dir {
            create_private_dir(dir)?;
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(Cache::new(cache).map_err(|e| anyhow::anyhow!("wasmtime cache: {e}"))?));
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;
        let linker = sandbox::linker(&engine).map_err(|e| anyhow::anyhow!("plugin linker: {e}"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginRuntime {
            inner: Arc::new(RuntimeInner { engine, linker, options, compile_lock: Mutex::new(()), ticker }),
        })
    }

    /// The engine every plugin version is compiled for.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Whether the epoch ticker is running. It rests a second after the last guest step's deadline (an idle server
    /// does not wake a thousand times a second) and wakes when a step is armed.
    pub fn epoch_ticking(&self) -> bool {
        self.inner.ticker.ticking()
    }

    /// A guest step is armed with a deadline `ticks` epoch ticks away: the ticker must run until then.
    pub(crate) fn deadline_armed(&self, ticks: u64) {
        self.inner.ticker.armed(ticks);
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// The limits a plugin of `kind` gets when its manifest sets none.
    pub fn default_limits(&self, kind: PluginKind) -> CallLimits {
        (self.inner.options.default_limits)(kind)
    }

    /// Whether sandboxes keep warm instances between calls.
    pub fn reuse_instances(&self) -> bool {
        self.inner.options.reuse_instances
    }

    /// The server maxima for manifest limits.
    pub fn maxima(&self) -> CallLimits {
        self.inner.options.maxima
    }

    /// Instances each version starts when it loads.
    pub fn warm_instances(&self) -> usize {
        self.inner.options.warm_instances
    }

    /// Largest component accepted, from a file or an upload.
    pub fn max_component_bytes(&self) -> usize {
        self.inner.options.max_component_bytes
    }

    /// Compiles `bytes` and inspects the result: it must be a component of one of the three worlds that imports
    /// nothing outside the allowlist. Runs once per plugin version, never on the request path.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledComponent, LoadError> {
        let max = self.max_component_bytes();
        if bytes.len() > max {
            return Err(LoadError::TooLarge { size: bytes.len(), max });
        }
        check_component_header(bytes)?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let component = {
            let _one_at_a_time = self.inner.compile_lock.lock();
            Component::new(&self.inner.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?
        };
        let ty = component.component_type();
        let engine = &self.inner.engine;
        let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        if let Some(interface) = sandbox::forbidden_import(imports.iter().map(String::as_str)) {
            return Err(LoadError::ForbiddenImport(interface));
        }
        let kind = world_of(&exports)?;
        Ok(CompiledComponent {
            component,
            kind,
            sha256: hex::encode(digest),
            digest,
            imports,
            exports,
            size: bytes.len(),
        })
    }
}

/// A core module or random bytes get a clear message rather than a parser error from deep inside wasmtime.
fn check_component_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 2] = [0x01, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent("not a WebAssembly binary (bad magic number)".into()));
    }
    if bytes[6..8] != COMPONENT_LAYER {
        return Err(LoadError::NotAComponent(
            "a core WebAssembly module, not a component; build with `--target wasm32-wasip2` \
             (or wrap it with `wasm-tools component new`)"
                .into(),
        ));
    }
    Ok(())
}

/// Tells the kind from the exports: exactly one of the plugin interfaces at version 0.1.x.
fn world_of(exports: &[String]) -> Result<PluginKind, LoadError> {
    let exported = |interface: &str| {
        exports.iter().any(|name| name.strip_prefix(interface).is_some_and(|rest| rest.starts_with("@0.1.")))
    };
    let kinds: Vec<PluginKind> = [
        (SELECTOR_EXPORT, PluginKind::Strategy),
        (EVALUATOR_EXPORT, PluginKind::Policy),
        (PROBER_EXPORT, PluginKind::HealthProbe),
    ]
    .into_iter()
    .filter(|(interface, _)| exported(interface))
    .map(|(_, kind)| kind)
    .collect();
    match kinds.as_slice() {
        [kind] => Ok(*kind),
        [] => Err(LoadError::UnknownWorld(exports.join(", "))),
        _ => Err(LoadError::UnknownWorld(format!("several plugin interfaces at once: {}", exports.join(", ")))),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("creating plugin cache {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| anyhow::anyhow!("securing plugin cache {}: {e}", dir.display()))?;
    Ok(())
}

/// Ticks a ticker goes on after the last deadline it was told of before it rests: a second.
const QUIET_TICKS: u64 = 1_000;

/// Advances the engine's epoch every [`EPOCH_TICK`] while a guest step may be running, so its deadline fires; stopped
/// and joined on drop. It rests (parked, no wake-ups) once a second has passed beyond the last deadline any step was
/// armed with: an idle server would otherwise wake a thousand times a second for nothing, which a laptop's battery
/// and a busy host's other tenants both notice. Arming a step ([`EpochTicker::armed`]) wakes it first.
struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

/// What the ticker thread and the arming steps share.
struct TickerShared {
    stop: AtomicBool,
    /// Ticks made so far: the clock deadlines are counted on.
    ticks: AtomicU64,
    /// The latest tick any armed step's deadline may reach.
    needed_until: AtomicU64,
    /// The thread is parked (or about to park); an arming step that finds it so unparks it.
    resting: AtomicBool,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            needed_until: AtomicU64::new(QUIET_TICKS),
            resting: AtomicBool::new(false),
        });
        let ticker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !ticker.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    let now = ticker.ticks.fetch_add(1, Ordering::SeqCst) + 1;
                    if now > ticker.needed_until.load(Ordering::SeqCst) + QUIET_TICKS {
                        ticker.rest(now);
                    }
                }
            })
            .expect("spawn the epoch ticker thread");
        EpochTicker { shared, thread: Some(thread) }
    }

    /// A guest step was just armed with a deadline `ticks` away: the ticker runs at least until then. Called after
    /// the store's deadline is set, so a `ticks` read late only makes the ticker run longer than needed.
    fn armed(&self, ticks: u64) {
        let shared = &self.shared;
        let until = shared.ticks.load(Ordering::SeqCst) + ticks;
        // Most calls need no later tick than one before them: a read leaves the shared line unwritten.
        if shared.needed_until.load(Ordering::SeqCst) < until {
            shared.needed_until.fetch_max(until, Ordering::SeqCst);
        }
        // After the deadline is published: either the ticker sees it before it parks, or this sees it resting.
        if shared.resting.load(Ordering::SeqCst)
            && shared.resting.swap(false, Ordering::SeqCst)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }

    fn ticking(&self) -> bool {
        !self.shared.resting.load(Ordering::SeqCst)
    }
}

impl TickerShared {
    /// Parks the ticker thread until a step is armed (or the ticker stops), unless one was armed meanwhile.
    fn rest(&self, now: u64) {
        self.resting.store(true, Ordering::SeqCst);
        // Looked at again after `resting` is published (see `armed`): a step armed in between keeps it awake.
        if now <= self.needed_until.load(Ordering::SeqCst) + QUIET_TICKS {
            self.resting.store(false, Ordering::SeqCst);
            return;
        }
        while self.resting.load(Ordering::SeqCst) && !self.stop.load(Ordering::Relaxed) {
            std::thread::park();
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
