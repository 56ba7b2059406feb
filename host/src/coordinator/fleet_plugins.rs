//! Fleet-wide plugins (DESIGN §5, §6): uploads, deletes and enable/disable are recorded in the store — one record
//! per name, a fleet version per change, who and when in its history — and every server applies the records to
//! its own plugin registry: all of them at start-up, then one name at each `plugin_*` store event. With Redis that
//! is every server of the fleet within the event stream's latency; with the memory store, this server.
//!
//! An upload is validated by the server that receives it before the fleet hears of it, so a component that does
//! not load never reaches the store and the last good version keeps serving everywhere. Compilation is one at a
//! time (a mutex), off the request path of other calls.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::sha256_hex;
use crate::model::{EventKind, EventRecord};
use crate::model::{PluginAction, PluginChange, PluginRecord, RolloutMode, StoreError};
use crate::plugins::manifest::Manifest;
use crate::plugins::{LoadError, PluginRegistry, PluginSource};
use crate::store::Store;

/// Why an upload or change was refused.
#[derive(Debug, thiserror::Error)]
pub enum FleetPluginError {
    /// The manifest does not parse (400, naming `manifest`).
    #[error("manifest: {0}")]
    BadManifest(String),
    /// An upload without a manifest would drop the settings the name's active version runs with (400
    /// `manifest_required`): its labels or config would silently vanish.
    #[error("{0}")]
    ManifestRequired(String),
    /// The component did not validate here; nothing was stored (400 `plugin_rejected`).
    #[error("{0}")]
    Rejected(LoadError),
    /// Uploads are off (`ARAGORA_CONTROL_PLANE_POLICY_SOURCE=inprocess`; 405).
    #[error("uploads are disabled on this server (ARAGORA_CONTROL_PLANE_POLICY_SOURCE=inprocess)")]
    UploadsDisabled,
    /// A change the fleet's state refuses (404 for an unknown name, 409 for disabling the default strategy).
    #[error("{0}")]
    Refused(String),
    /// The store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies fleet plugin records to this server's registry, and makes changes on behalf of the API.
pub struct FleetPlugins {
    store: Arc<dyn Store>,
    registry: Arc<PluginRegistry>,
    uploads_enabled: bool,
    default_strategy: String,
    /// One compilation at a time; also keeps two applications of one name from interleaving.
    applying: tokio::sync::Mutex<()>,
}

impl FleetPlugins {
    /// Fleet plugins over `store` for `registry`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<PluginRegistry>,
        uploads_enabled: bool,
        default_strategy: String,
    ) -> Self {
        FleetPlugins { store, registry, uploads_enabled, default_strategy, applying: Default::default() }
    }

    /// Validates `bytes` (with its manifest text) as an upload of `name`, records it for the fleet and applies it
    /// here. Other servers apply it when they see the store's `plugin_uploaded` event.
    pub async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<String>,
        by: &str,
    ) -> Result<PluginRecord, FleetPluginError> {
        self.offer(name, bytes, manifest, None, by).await
    }

    /// Validates `bytes` as a candidate of `name` (beside its active version, of the same kind) and stages it for
    /// the fleet as a shadow or a canary, replacing any candidate. Every server installs it when it sees the
    /// store's `plugin_staged` event; this one at once.
    pub async fn stage(
        &self,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<String>,
        mode: RolloutMode,
        by: &str,
    ) -> Result<PluginRecord, FleetPluginError> {
        if let RolloutMode::Canary { percent } = mode
            && !(1..=100).contains(&percent)
        {
            return Err(FleetPluginError::Refused(format!("canary: {percent} is not a percentage from 1 to 100")));
        }
        self.offer(name, bytes, manifest, Some(mode), by).await
    }

    /// An upload (`candidate` = `None`) or a staged candidate: validated here — compiled once, off the async
    /// workers — then recorded for the fleet and applied here.
    async fn offer(
        &self,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<String>,
        candidate: Option<RolloutMode>,
        by: &str,
    ) -> Result<PluginRecord, FleetPluginError> {
        if !self.uploads_enabled {
            return Err(FleetPluginError::UploadsDisabled);
        }
        let parsed = match &manifest {
            Some(text) => Manifest::parse(text).map_err(FleetPluginError::BadManifest)?,
            None => {
                self.check_settings_kept(name)?;
                Manifest::default()
            }
        };
        {
            let _applying = self.applying.lock().await;
            let registry = self.registry.clone();
            let (name_owned, bytes_ref) = (name.to_string(), bytes.clone());
            tokio::task::spawn_blocking(move || match candidate {
                None => registry.validate(&name_owned, PluginSource::Upload, &bytes_ref, parsed),
                Some(_) => registry.validate_rollout(&name_owned, &bytes_ref, parsed),
            })
            .await
            .map_err(|e| FleetPluginError::Refused(format!("validation did not finish: {e}")))?
            .map_err(FleetPluginError::Rejected)?;
        }
        let sha256 = sha256_hex(&bytes);
        let action = match candidate {
            None => PluginAction::Upload { bytes, sha256, manifest },
            Some(mode) => PluginAction::Stage { bytes, sha256, manifest, mode },
        };
        let record = self.store.change_plugin(PluginChange { name: name.into(), action, by: by.into() }).await?;
        self.apply(&record).await;
        Ok(record)
    }

    /// An upload with no manifest replaces the name's active version with one that has no labels, no config and
    /// default settings. When the active version has any of those, that is almost always a mistake (a policy
    /// uploaded this way never saw its labels and let forbidden tasks through), so it is refused, naming what
    /// would be lost; an explicitly empty manifest says "drop them".
    fn check_settings_kept(&self, name: &str) -> Result<(), FleetPluginError> {
        let Some(active) = self.registry.active(name) else { return Ok(()) };
        let manifest = &active.manifest;
        let mut settings = Vec::new();
        if !manifest.labels.is_empty() {
            settings.push(format!("labels {:?}", manifest.labels));
        }
        if !manifest.config.is_empty() {
            let keys: Vec<&String> = manifest.config.keys().collect();
            settings.push(format!("config keys {keys:?}"));
        }
        if manifest.needs_details {
            settings.push("needs_details".into());
        }
        if manifest.needs_payload {
            settings.push("needs_payload".into());
        }
        if manifest.order.is_some() {
            settings.push(format!("order {}", manifest.order()));
        }
        if manifest.on_error != Default::default() {
            settings.push("on_error = \"allow\"".into());
        }
        if settings.is_empty() {
            return Ok(());
        }
        Err(FleetPluginError::ManifestRequired(format!(
            "the active {} version of {name} runs with a manifest ({}); send the manifest with the upload \
             (multipart part `manifest`, or the JSON field `manifest`), or an empty one to drop those settings",
            active.source,
            settings.join(", ")
        )))
    }

    /// Deletes the upload of `name`, or enables or disables the name, or promotes or rolls back its candidate,
    /// for the whole fleet.
    pub async fn change(&self, name: &str, action: PluginAction, by: &str) -> Result<PluginRecord, FleetPluginError> {
        match &action {
            PluginAction::Upload { .. } => unreachable!("uploads go through FleetPlugins::upload"),
            PluginAction::Stage { .. } => unreachable!("candidates go through FleetPlugins::stage"),
            PluginAction::Promote { .. } | PluginAction::Rollback { .. } => {}
            PluginAction::Delete if !self.uploads_enabled => return Err(FleetPluginError::UploadsDisabled),
            PluginAction::Disable if name == self.default_strategy => {
                return Err(FleetPluginError::Refused(format!(
                    "{name} is DEFAULT_STRATEGY: tasks that name no strategy would have none; change DEFAULT_STRATEGY first"
                )));
            }
            PluginAction::Enable | PluginAction::Disable => {
                let known = self.registry.info(name).is_some() || self.record(name).await?.is_some();
                if !known {
                    return Err(StoreError::PluginNotFound(name.to_string()).into());
                }
            }
            PluginAction::Delete => {}
        }
        let record = self.store.change_plugin(PluginChange { name: name.into(), action, by: by.into() }).await?;
        self.apply(&record).await;
        Ok(record)
    }

    /// The fleet's record of `name`, if it has one.
    pub async fn record(&self, name: &str) -> Result<Option<PluginRecord>, StoreError> {
        self.store.plugin_record(name).await
    }

    /// Applies every fleet record (at start-up, and after missing events).
    pub async fn sync_all(&self) -> Result<(), StoreError> {
        for record in self.store.plugin_records().await? {
            self.apply(&record).await;
        }
        Ok(())
    }

    /// Brings this server's registry in line with `record`: the upload installed (or removed), the name enabled
    /// or disabled, the fleet version noted. Failures are recorded on the registry (as a rejection) and logged.
    async fn apply(&self, record: &PluginRecord) {
        let _applying = self.applying.lock().await;
        let name = &record.name;
        // A record read before a newer one was applied here (an API call's answer queued behind the event loop)
        // must not undo it.
        if self.registry.fleet_version(name).is_some_and(|applied| record.version < applied) {
            return;
        }
        let current = self.registry.version(name, PluginSource::Upload);
        let manifest = match record.manifest.as_deref().map(Manifest::parse).transpose() {
            Ok(manifest) => manifest.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(plugin = %name, %error, "fleet upload has a bad manifest; not applied");
                return;
            }
        };
        // The same bytes with another manifest are a new version too (new labels, config or limits).
        let applied = |sha256: &str| current.as_ref().is_some_and(|v| v.sha256 == sha256 && v.manifest == manifest);
        // A promoted candidate is already compiled and warm here: it moves into place without a reload.
        if let Some(sha256) = &record.sha256
            && !applied(sha256)
            && self.registry.promote_rollout(name, sha256, &manifest)
        {
            self.apply_candidate(record).await;
            self.registry.set_disabled(name, !record.enabled);
            self.registry.set_fleet_version(name, record.version);
            return;
        }
        match &record.sha256 {
            Some(sha256) if !applied(sha256) => match self.store.plugin_component(name).await {
                Ok(Some((stored_sha, bytes))) if &stored_sha == sha256 && sha256_hex(&bytes) == *sha256 => {
                    let registry = self.registry.clone();
                    let name = name.clone();
                    let installed = tokio::task::spawn_blocking(move || {
                        registry.install(&name, PluginSource::Upload, &bytes, manifest).map(|_| ())
                    })
                    .await;
                    if let Ok(Err(error)) = installed {
                        tracing::warn!(plugin = %record.name, %error, "fleet upload rejected on this server");
                    }
                }
                // A newer change replaced it meanwhile: its own event brings it.
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(plugin = %name, %error, "cannot read the fleet upload; will retry on the next event");
                    return;
                }
            },
            Some(_) => {}
            None => {
                if current.is_some() {
                    self.registry.remove(name, PluginSource::Upload);
                }
            }
        }
        self.apply_candidate(record).await;
        self.registry.set_disabled(name, !record.enabled);
        self.registry.set_fleet_version(name, record.version);
    }

    /// Installs the record's candidate here (unless it already is), or removes a fleet candidate the record no
    /// longer has. A candidate from a `.shadow.wasm` file is this server's own and stays.
    async fn apply_candidate(&self, record: &PluginRecord) {
        let name = &record.name;
        let current = self.registry.rollout(name);
        let Some(candidate) = &record.candidate else {
            if current.is_some() {
                self.registry.remove_rollout(name, PluginSource::Upload);
            }
            return;
        };
        let manifest = match candidate.manifest.as_deref().map(Manifest::parse).transpose() {
            Ok(manifest) => manifest.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(plugin = %name, %error, "fleet candidate has a bad manifest; not applied");
                return;
            }
        };
        let installed = current.is_some_and(|r| {
            r.version.source == PluginSource::Upload
                && r.version.sha256 == candidate.sha256
                && r.version.manifest == manifest
                && r.mode == candidate.mode
        });
        if installed {
            return;
        }
        match self.store.plugin_candidate_component(name).await {
            Ok(Some((sha256, bytes))) if sha256 == candidate.sha256 && sha256_hex(&bytes) == sha256 => {
                let (registry, name, mode) = (self.registry.clone(), name.clone(), candidate.mode);
                let installed = tokio::task::spawn_blocking(move || {
                    registry.install_rollout(&name, PluginSource::Upload, &bytes, manifest, mode).map(|_| ())
                })
                .await;
                if let Ok(Err(error)) = installed {
                    tracing::warn!(plugin = %record.name, %error, "fleet candidate rejected on this server");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(plugin = %name, %error, "cannot read the fleet candidate; will retry on the next event")
            }
        }
    }

    /// Every second until shutdown: rolls back, fleet-wide, each canary whose failures or fallbacks exceed the
    /// active version's by more than the configured margin over its minimum of calls (on this server's counts:
    /// the first server to see it decides for all).
    pub async fn run_canary_guard(self: Arc<Self>, min_calls: u64, margin: f64, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            for (name, rollout, active) in self.registry.canaries() {
                let Some(reason) = rollout.excess(&active, min_calls, margin) else { continue };
                if rollout.version.source != PluginSource::Upload {
                    tracing::warn!(plugin = %name, %reason, "canary from a file would be rolled back; remove the file");
                    continue;
                }
                tracing::warn!(plugin = %name, %reason, "rolling the canary back");
                let action =
                    PluginAction::Rollback { sha256: Some(rollout.version.sha256.clone()), reason: Some(reason) };
                match self.change(&name, action, "canary-guard").await {
                    Ok(_) | Err(FleetPluginError::Store(StoreError::Conflict { .. })) => {}
                    Err(error) => tracing::warn!(plugin = %name, %error, "canary rollback failed; trying again"),
                }
            }
        }
    }

    /// Applies the changes the coordinator's event pump hands over (see [`FleetChange::of`]) until shutdown.
    pub async fn run(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<FleetChange>, shutdown: CancellationToken) {
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
            };
            match change {
                FleetChange::Named(name) => match self.record(&name).await {
                    Ok(Some(record)) => self.apply(&record).await,
                    Ok(None) => {}
                    Err(error) => tracing::warn!(plugin = name, %error, "cannot read a fleet plugin change"),
                },
                FleetChange::Missed => {
                    if let Err(error) = self.sync_all().await {
                        tracing::warn!(%error, "cannot resync fleet plugins after missing events");
                    }
                }
            }
        }
    }
}

/// What the store's events say about fleet plugins.
#[derive(Debug)]
pub enum FleetChange {
    /// The record of this name changed.
    Named(String),
    /// Events were missed: resync every name.
    Missed,
}

impl FleetChange {
    /// The change a store event announces, if it is a `plugin_*` store event.
    pub fn of(event: &EventRecord) -> Option<FleetChange> {
        if !is_fleet_plugin_event(event.kind) {
            return None;
        }
        event.str_field("name").map(|name| FleetChange::Named(name.to_string()))
    }
}

fn is_fleet_plugin_event(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::PluginUploaded
            | EventKind::PluginDeleted
            | EventKind::PluginEnabled
            | EventKind::PluginDisabled
            | EventKind::PluginStaged
            | EventKind::PluginPromoted
            | EventKind::PluginRolledBack
    )
}
