//! Hot reload of `PLUGINS_DIR`: top-level `NAME.wasm` (+ optional `NAME.toml`) files become the `file` source of
//! plugin `NAME`. Guest crate folders inside the directory are ignored.
//!
//! File events only say *which names* to look at; what to do is decided from the directory's contents, so editors
//! that write a temporary file and rename it, `cp` writing in chunks, and `mv` all end the same way. Events are
//! debounced per name, and a slow rescan catches anything the OS did not report (a directory replaced wholesale).
//! A version whose bytes and manifest were already tried is not validated again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use super::rollout::RolloutMode;
use super::{LoadError, PluginRegistry, PluginSource};

/// Timing of the watcher.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// Quiet time after the last event for a name before it is reloaded.
    pub debounce: Duration,
    /// Interval of the full rescan that backs up file events.
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { debounce: Duration::from_millis(150), rescan: Duration::from_secs(2) }
    }
}

/// What one pass over the directory did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Names whose new version was activated (or loaded shadowed).
    pub loaded: Vec<String>,
    /// Names whose new version was rejected.
    pub rejected: Vec<String>,
    /// Names whose file disappeared.
    pub removed: Vec<String>,
}

/// Reconciles the registry's `file` sources with one directory. Owned by the watcher thread (or used once at
/// start-up); remembers what it tried so unchanged files are not validated again.
pub struct DirectorySync {
    dir: PathBuf,
    registry: Arc<PluginRegistry>,
    /// Per name, the content hash of the last version tried (accepted or rejected).
    tried: HashMap<String, [u8; 32]>,
    /// Per name, (size, mtime) of its files at the last scan.
    seen: HashMap<String, FileStamp>,
}

type FileStamp = (Option<(u64, SystemTime)>, Option<(u64, SystemTime)>);

impl DirectorySync {
    /// A sync for `dir` feeding `registry`.
    pub fn new(dir: impl Into<PathBuf>, registry: Arc<PluginRegistry>) -> Self {
        DirectorySync { dir: dir.into(), registry, tried: HashMap::new(), seen: HashMap::new() }
    }

    /// Loads every plugin in the directory and drops file sources whose files are gone.
    pub fn sync_all(&mut self) -> SyncReport {
        let mut names: HashSet<String> = self.names_on_disk();
        names.extend(self.tried.keys().cloned());
        let mut report = SyncReport::default();
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        for name in names {
            self.reconcile(&name, &mut report);
        }
        report
    }

    /// Reconciles only the names whose files changed size or mtime since the last scan.
    fn rescan(&mut self) -> SyncReport {
        let mut report = SyncReport::default();
        let mut names: HashSet<String> = self.names_on_disk();
        names.extend(self.seen.keys().cloned());
        for name in names {
            let stamp = self.stamp(&name);
            if self.seen.get(&name) != Some(&stamp) {
                self.reconcile(&name, &mut report);
            }
        }
        report
    }

    fn names_on_disk(&self) -> HashSet<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return HashSet::new() };
        entries.flatten().filter_map(|entry| plugin_name(&self.dir, &entry.path())).collect()
    }

    fn stamp(&self, name: &str) -> FileStamp {
        let stat = |path: PathBuf| {
            std::fs::metadata(path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        };
        (stat(self.wasm_path(name)), stat(self.manifest_path(name)))
    }

    fn wasm_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// Makes the registry's `file` version of `name` match the directory.
    fn reconcile(&mut self, name: &str, report: &mut SyncReport) {
        self.seen.insert(name.to_string(), self.stamp(name));
        let bytes = match read_bounded(&self.wasm_path(name), self.registry.runtime().max_component_bytes()) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                // No component (perhaps a lone NAME.toml): drop any file version; the stamp stays recorded so the
                // rescan does not come back to it until something changes.
                self.tried.remove(name);
                let removed = match shadow_of(name) {
                    Some(base) => self.registry.remove_rollout(base, PluginSource::File),
                    None => self.registry.remove(name, PluginSource::File),
                };
                if removed {
                    report.removed.push(name.to_string());
                }
                return;
            }
            Err(error) => {
                tracing::warn!(plugin = name, %error, "cannot read plugin file; will retry on the next change");
                self.seen.remove(name);
                return;
            }
        };
        let manifest_text = match read_bounded(&self.manifest_path(name), MAX_MANIFEST_BYTES) {
            Ok(None) => Ok(None),
            Ok(Some(raw)) => String::from_utf8(raw).map(Some).map_err(|_| "NAME.toml is not UTF-8".to_string()),
            Err(error) => Err(format!("cannot read the manifest: {error}")),
        };
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(&bytes)
            .chain_update(match &manifest_text {
                Ok(Some(text)) => text.as_bytes(),
                Ok(None) => b"\0no manifest",
                Err(error) => error.as_bytes(),
            })
            .finalize()
            .into();
        if self.tried.get(name) == Some(&fingerprint) {
            return;
        }
        self.tried.insert(name.to_string(), fingerprint);
        let manifest = match manifest_text.and_then(|text| text.as_deref().map(Manifest::parse).transpose()) {
            Ok(manifest) => manifest.unwrap_or_default(),
            Err(message) => {
                self.registry.reject(name, PluginSource::File, &bytes, &LoadError::Manifest(message));
                report.rejected.push(name.to_string());
                return;
            }
        };
        let installed = match shadow_of(name) {
            Some(base) => {
                self.registry.install_rollout(base, PluginSource::File, &bytes, manifest, RolloutMode::Shadow)
            }
            None => self.registry.install(name, PluginSource::File, &bytes, manifest),
        };
        match installed {
            Ok(_) => report.loaded.push(name.to_string()),
            Err(error) => {
                if error.is_transient() {
                    // A trial call that missed its wall-clock deadline on a busy machine says little about the
                    // plugin: forget this attempt so the next rescan tries again.
                    self.tried.remove(name);
                    self.seen.remove(name);
                }
                report.rejected.push(name.to_string());
            }
        }
    }
}

/// The plugin a `NAME.shadow.wasm` file shadows (decision 0022): `NAME`, when `name` is such a file's stem.
fn shadow_of(name: &str) -> Option<&str> {
    name.strip_suffix(".shadow").filter(|base| !base.is_empty())
}

/// Largest manifest read.
const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// Reads a regular file of at most `limit` bytes (one more is read to notice an oversized file, which the loader
/// then rejects with its size). `None` when there is no such regular file: FIFOs, devices and directories are
/// never opened, so a stray `x.wasm` pipe cannot block the watcher.
fn read_bounded(path: &Path, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(file) => file.take(limit as u64 + 1).read_to_end(&mut bytes)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(Some(bytes))
}

/// The plugin name a path stands for: a top-level `NAME.wasm` or `NAME.toml` of `dir`.
fn plugin_name(dir: &Path, path: &Path) -> Option<String> {
    if path.parent()? != dir {
        return None;
    }
    let extension = path.extension()?.to_str()?;
    if extension != "wasm" && extension != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    // Editors' and cp's temporary files (".name.wasm.swp", ".#name.wasm") start with a dot.
    if stem.starts_with('.') {
        return None;
    }
    Some(stem.to_string())
}

/// The running watcher: a thread that owns the [`DirectorySync`]; stopped and joined by [`stop`](Self::stop) or
/// on drop.
pub struct PluginWatcher {
    stop: Option<mpsc::Sender<WatchMessage>>,
    thread: Option<JoinHandle<()>>,
}

enum WatchMessage {
    Changed(String),
    Stop,
}

impl PluginWatcher {
    /// Loads the directory once (before returning, so the server starts with its plugins) and then follows it.
    pub fn start(
        dir: impl Into<PathBuf>,
        registry: Arc<PluginRegistry>,
        options: WatchOptions,
    ) -> anyhow::Result<(Self, SyncReport)> {
        let dir: PathBuf = dir.into();
        let dir = dir.canonicalize().unwrap_or(dir);
        let mut sync = DirectorySync::new(dir.clone(), registry);
        let report = sync.sync_all();
        let (sender, receiver) = mpsc::channel();
        let events = sender.clone();
        let watched = dir.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                for path in &event.paths {
                    if let Some(name) = plugin_name(&watched, path) {
                        let _ = events.send(WatchMessage::Changed(name));
                    }
                }
            }
        })?;
        if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the plugins directory; relying on rescans");
        }
        let thread = std::thread::Builder::new()
            .name("plugin-watcher".into())
            .spawn(move || follow(sync, receiver, options, watcher))?;
        Ok((PluginWatcher { stop: Some(sender), thread: Some(thread) }, report))
    }

    /// Stops following the directory and waits for the thread (a reload in progress finishes first).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(WatchMessage::Stop);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The watcher thread: debounce events per name, reconcile quiet names, rescan now and then.
fn follow(
    mut sync: DirectorySync,
    receiver: mpsc::Receiver<WatchMessage>,
    options: WatchOptions,
    _watcher: RecommendedWatcher,
) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut next_rescan = Instant::now() + options.rescan;
    loop {
        let now = Instant::now();
        let next_due = pending.values().map(|last| *last + options.debounce).min().unwrap_or(next_rescan);
        let wait = next_due.min(next_rescan).saturating_duration_since(now);
        match receiver.recv_timeout(wait) {
            Ok(WatchMessage::Changed(name)) => {
                pending.insert(name, Instant::now());
            }
            Ok(WatchMessage::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Due work runs on every turn, not only on timeouts: a steady stream of events about one file must not
        // hold back another file's reload or the rescan.
        let now = Instant::now();
        let due: Vec<String> =
            pending.iter().filter(|(_, last)| now >= **last + options.debounce).map(|(name, _)| name.clone()).collect();
        let mut report = SyncReport::default();
        for name in due {
            pending.remove(&name);
            sync.reconcile(&name, &mut report);
        }
        if now >= next_rescan {
            sync.rescan();
            next_rescan = now + options.rescan;
        }
    }
}
