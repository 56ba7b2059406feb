//! What a plugin may touch: the per-store host state (a null WASI context, the memory limiter, the log, the
//! frozen clock and the seeded randomness), the import allowlist, and the linker that provides only those imports.
//!
//! Guests built with Rust std import `wasi:cli/*` and `wasi:io/*` (and `wasi:random/*` or
//! `wasi:clocks/wall-clock` when they use them). Those are linked from a context with no environment, arguments,
//! files or sockets. Interpreters compiled to components (componentize-py, componentize-js) also import
//! `wasi:filesystem/*` and `wasi:sockets/*` whether or not the plugin's code uses them: those are linked from the
//! same empty context, where no directory is preopened (so no file can be opened) and every network use is off
//! (no socket can be created, no name resolved) — decision 0023. Anything else (HTTP above all) rejects the
//! component at load, naming the interface.
//!
//! Both clocks read the call's frozen `now`. The monotonic clock is our own: wasmtime-wasi's `subscribe-duration`
//! is a real sleep in host code, where neither fuel nor the epoch deadline can interrupt it, so a plugin calling
//! `sleep` would hold its caller for as long as it liked. Here every clock subscription is ready at once: time
//! does not pass inside a call, and a plugin that waits for it only burns its own fuel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::p2::bindings::sync as wasi_sync;
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::ready_io::{ReadyIo, ReadyTable};

/// Interface prefixes a plugin may import. `wasi:filesystem` and `wasi:sockets` are there only because
/// interpreters import them unconditionally: they are linked over an empty context (see the module doc). HTTP is
/// absent on purpose. Our own `types` interface appears as an import because the exported interfaces use its types;
/// it holds no functions.
const ALLOWED_IMPORT_PREFIXES: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:random/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "aragora:control-plane/types@0.1.",
];

/// Bytes of stdout + stderr kept per call; the rest is dropped silently so a chatty plugin cannot fail a call.
pub const LOG_BYTES_PER_CALL: usize = 4096;

/// Returns the first import outside the allowlist, if any (the name of the interface, for the error message).
pub fn forbidden_import<'a>(imports: impl IntoIterator<Item = &'a str>) -> Option<String> {
    imports
        .into_iter()
        .find(|name| !ALLOWED_IMPORT_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .map(str::to_string)
}

/// Builds the one linker of the process: the allowed WASI interfaces and nothing else.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    let l = &mut linker;
    wasi_sync::io::error::add_to_linker::<HostState, HasTable>(l, |s| &mut s.table)?;
    wasi_sync::io::poll::add_to_linker::<HostState, ReadyIo>(l, |s| ReadyTable(&mut s.table))?;
    wasi_sync::io::streams::add_to_linker::<HostState, ReadyIo>(l, |s| ReadyTable(&mut s.table))?;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::random::WasiRandom;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<HostState, FrozenMonotonic>(l, |s| FrozenMonotonicView {
        now_ns: s.clock.now().as_nanos() as u64,
        table: &mut s.table,
    })?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |s| s.wasi.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |s| s.wasi.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |s| s.wasi.random())?;
    // Empty on purpose: the context preopens no directory and allows no network use (`HostState::new`).
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
    wasi_sync::filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, |s| s.filesystem())?;
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, |s| s.filesystem())?;
    wasi_sync::sockets::tcp::add_to_linker::<HostState, WasiSockets>(l, |s| s.sockets())?;
    wasi_sync::sockets::udp::add_to_linker::<HostState, WasiSockets>(l, |s| s.sockets())?;
    wasi_sync::sockets::udp_create_socket::add_to_linker::<HostState, NoUdp>(l, |s| NoUdpView { table: &mut s.table })?;
    sockets::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(l, |s| s.sockets())?;
    sockets::instance_network::add_to_linker::<HostState, WasiSockets>(l, |s| s.sockets())?;
    sockets::network::add_to_linker::<HostState, WasiSockets>(l, &Default::default(), |s| s.sockets())?;
    sockets::ip_name_lookup::add_to_linker::<HostState, WasiSockets>(l, |s| s.sockets())?;
    Ok(linker)
}

/// `wasi:sockets/udp-create-socket`, refusing every socket. wasmtime-wasi's refuses too (UDP is off in the
/// context), but its synchronous binding first enters tokio with `block_on`, which panics on a runtime worker,
/// where plugin calls run: a plugin could crash its caller with one call. The other socket and filesystem
/// functions that block that way need a socket or a descriptor, which no plugin can ever get.
struct NoUdp;

impl HasData for NoUdp {
    type Data<'a> = NoUdpView<'a>;
}

struct NoUdpView<'a> {
    table: &'a mut ResourceTable,
}

impl wasi_sync::sockets::udp_create_socket::Host for NoUdpView<'_> {
    fn create_udp_socket(
        &mut self,
        _family: wasi_sync::sockets::network::IpAddressFamily,
    ) -> wasmtime_wasi::p2::SocketResult<wasmtime::component::Resource<wasmtime_wasi::p2::UdpSocket>> {
        Err(wasi_sync::sockets::network::ErrorCode::AccessDenied.into())
    }
}

/// What the binding needs besides: turning the refusal into the guest's error code, and the network resource.
impl sockets::network::Host for NoUdpView<'_> {
    fn convert_error_code(
        &mut self,
        error: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<sockets::network::ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        _error: wasmtime::component::Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<Option<sockets::network::ErrorCode>> {
        Ok(None)
    }
}

impl sockets::network::HostNetwork for NoUdpView<'_> {
    fn drop(&mut self, network: wasmtime::component::Resource<sockets::network::Network>) -> wasmtime::Result<()> {
        self.table.delete(network)?;
        Ok(())
    }
}

/// The monotonic clock plugins see: frozen at the call's `now`, every subscription ready at once.
struct FrozenMonotonic;

impl HasData for FrozenMonotonic {
    type Data<'a> = FrozenMonotonicView<'a>;
}

struct FrozenMonotonicView<'a> {
    now_ns: u64,
    table: &'a mut ResourceTable,
}

/// A clock subscription that is already over.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

impl clocks::monotonic_clock::Host for FrozenMonotonicView<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(self.now_ns)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1_000_000)
    }

    fn subscribe_instant(&mut self, _when: u64) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        let elapsed = self.table.push(Elapsed)?;
        wasmtime_wasi::p2::subscribe(self.table, elapsed)
    }

    fn subscribe_duration(&mut self, _duration: u64) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        let elapsed = self.table.push(Elapsed)?;
        wasmtime_wasi::p2::subscribe(self.table, elapsed)
    }
}

struct HasTable;

impl HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// The data of one wasmtime `Store`: everything a guest can reach, and the meters the host reads after a call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and table caps, with the peak the guest reached.
    pub(crate) limiter: CallLimiter,
    log: PluginLog,
    clock: FrozenClock,
    rng: CallRng,
}

impl HostState {
    /// A fresh sandbox for a plugin whose sha256 is `identity`.
    pub fn new(identity: [u8; 32], memory_bytes: usize, table_elements: usize) -> Self {
        let log = PluginLog::default();
        let clock = FrozenClock::default();
        let rng = CallRng::new(identity);
        let mut builder = WasiCtx::builder();
        builder
            .stdout(log.clone())
            .stderr(log.clone())
            .wall_clock(clock.clone())
            .secure_random(rng.clone())
            .insecure_random(rng.clone())
            .insecure_random_seed(u128::from_le_bytes(identity[..16].try_into().expect("16 bytes")))
            .allow_blocking_current_thread(true)
            // No directory is preopened (the builder has none unless asked); no network use at all.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        HostState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: CallLimiter::new(memory_bytes, table_elements),
            log,
            clock,
            rng,
        }
    }

    /// Sets what the guest sees during the next call: its clocks read `now_ms`, its randomness follows `seed`.
    pub(crate) fn prepare_call(&mut self, now_ms: u64, seed: u64) {
        self.clock.set(now_ms);
        self.rng.reseed(seed);
        self.log.clear();
        self.limiter.denied = false;
    }

    /// Takes what the guest wrote to stdout and stderr during the call.
    pub fn take_log(&mut self) -> String {
        self.log.take()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps the linear memory and table elements of a whole store (all memories and tables of all the component's
/// core instances together, so a component with several memories gets one budget, not one each).
pub struct CallLimiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Bytes of linear memory the store holds now, over all memories: the plugin's memory footprint.
    pub memory_in_use: usize,
    /// Table elements the store holds now, over all tables.
    tables_in_use: usize,
    /// The guest asked for more memory than its cap during the current call.
    pub denied: bool,
}

impl CallLimiter {
    fn new(memory_bytes: usize, table_elements: usize) -> Self {
        CallLimiter { memory_bytes, table_elements, memory_in_use: 0, tables_in_use: 0, denied: false }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if total > self.memory_bytes || maximum.is_some_and(|max| desired > max) {
            self.denied = true;
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.tables_in_use - current.min(self.tables_in_use) + desired;
        if total > self.table_elements || maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.tables_in_use = total;
        Ok(true)
    }
}

/// Lines a plugin version printed, newest last, as `GET /plugins/{name}` shows them; each is also logged at `info`
/// with the plugin's name, so what a plugin prints is found where users look.
pub struct LogTail {
    plugin: String,
    lines: Mutex<std::collections::VecDeque<String>>,
}

/// Lines kept per plugin version.
pub const LOG_TAIL_LINES: usize = 50;

impl LogTail {
    /// An empty tail for the plugin called `plugin`.
    pub fn new(plugin: &str) -> Self {
        LogTail { plugin: plugin.to_string(), lines: Mutex::new(std::collections::VecDeque::new()) }
    }

    /// Records one call's output (what [`HostState::take_log`] gave), line by line.
    pub fn record(&self, output: &str) {
        if output.is_empty() {
            return;
        }
        let mut lines = self.lines.lock();
        for line in output.lines().filter(|l| !l.trim().is_empty()) {
            // The guest chose these bytes: control characters are escaped so it cannot forge log lines.
            let line: String = line
                .chars()
                .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
                .collect();
            tracing::info!(plugin = %self.plugin, "plugin output: {line}");
            if lines.len() == LOG_TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().iter().cloned().collect()
    }
}

/// The guest's stdout and stderr: one bounded buffer per store, emptied at every call.
#[derive(Clone, Default)]
struct PluginLog(Arc<Mutex<Vec<u8>>>);

impl PluginLog {
    fn clear(&self) {
        self.0.lock().clear();
    }

    fn take(&self) -> String {
        let mut buffer = self.0.lock();
        if buffer.is_empty() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&buffer).into_owned();
        buffer.clear();
        text
    }
}

impl wasmtime_wasi::cli::IsTerminal for PluginLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for PluginLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl PluginLog {
    /// Appends what fits in the call's 4 KiB and drops the rest.
    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.0.lock();
        let room = LOG_BYTES_PER_CALL.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PluginLog {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept: overflow is dropped in `write`, so the guest never blocks or fails on its log.
        Ok(LOG_BYTES_PER_CALL)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for PluginLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The guest's wall clock, frozen at the call's `now`: a plugin's answer depends only on its inputs.
#[derive(Clone, Default)]
struct FrozenClock(Arc<AtomicU64>);

impl FrozenClock {
    fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        FrozenClock::now(self)
    }
}

/// WASI randomness seeded from the plugin's sha256 and the call's seed. The generator is built lazily, so the
/// calls that draw nothing (most of them) pay nothing.
#[derive(Clone)]
struct CallRng(Arc<Mutex<CallRngState>>);

struct CallRngState {
    identity: [u8; 32],
    seed: u64,
    rng: Option<StdRng>,
}

impl CallRng {
    fn new(identity: [u8; 32]) -> Self {
        CallRng(Arc::new(Mutex::new(CallRngState { identity, seed: 0, rng: None })))
    }

    fn reseed(&self, seed: u64) {
        let mut state = self.0.lock();
        state.seed = seed;
        state.rng = None;
    }

    fn with_rng<R>(&self, f: impl FnOnce(&mut StdRng) -> R) -> R {
        let mut state = self.0.lock();
        let CallRngState { identity, seed, rng } = &mut *state;
        let rng = rng.get_or_insert_with(|| {
            let digest = Sha256::new().chain_update(identity).chain_update(seed.to_le_bytes()).finalize();
            StdRng::from_seed(digest.into())
        });
        f(rng)
    }
}

impl rand::TryRng for CallRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.with_rng(rand::Rng::next_u32))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.with_rng(rand::Rng::next_u64))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.with_rng(|rng| rand::Rng::fill_bytes(rng, dst));
        Ok(())
    }
}
