//! The fleet's plugin records (DESIGN §5, §6): an upload, delete, enable or disable of a name, its fleet version and
//! history, and the rule for plugin names. The stores keep these records; every server applies them to its own
//! plugin registry.

use serde::{Deserialize, Serialize};

/// A fleet-wide plugin change, as the API asks for it.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginAction {
    /// A new component (validated by the server that received it) with its manifest text.
    Upload {
        /// The component.
        bytes: Vec<u8>,
        /// Its sha256, hex.
        sha256: String,
        /// The manifest (TOML), if one was sent.
        manifest: Option<String>,
    },
    /// Remove the upload: the file or built-in of the name (if any) answers again.
    Delete,
    /// Let the name answer calls again.
    Enable,
    /// No version of the name answers calls, on any server.
    Disable,
    /// A candidate version beside the active one, as a shadow or a canary (replacing any candidate).
    Stage {
        /// The component.
        bytes: Vec<u8>,
        /// Its sha256, hex.
        sha256: String,
        /// The manifest (TOML), if one was sent.
        manifest: Option<String>,
        /// Shadow or canary.
        mode: RolloutMode,
    },
    /// The candidate becomes the upload (the active version) and stops being a candidate, in one step.
    Promote {
        /// The candidate's sha256 the caller saw; another candidate → 409 `candidate_changed`.
        sha256: Option<String>,
    },
    /// The candidate is dropped; the active version answers everything again.
    Rollback {
        /// Only this candidate (an automatic rollback must not drop a newer one).
        sha256: Option<String>,
        /// Why (automatic rollbacks say what they measured).
        reason: Option<String>,
    },
}

/// How a candidate version takes part in decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RolloutMode {
    /// Sees every input the active version sees; its answers have no effect.
    Shadow,
    /// Answers `percent` % of decisions, chosen by task id (agent id for probes and register policies).
    Canary {
        /// 1 to 100.
        percent: u8,
    },
}

impl RolloutMode {
    /// `shadow` or `canary`.
    pub fn name(self) -> &'static str {
        match self {
            RolloutMode::Shadow => "shadow",
            RolloutMode::Canary { .. } => "canary",
        }
    }

    /// How history entries describe it: `shadow`, `canary 10 %`.
    pub fn describe(self) -> String {
        match self {
            RolloutMode::Shadow => "shadow".into(),
            RolloutMode::Canary { percent } => format!("canary {percent} %"),
        }
    }
}

/// A name's candidate version, as the fleet records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginCandidate {
    /// Shadow or canary (with its percent).
    #[serde(flatten)]
    pub mode: RolloutMode,
    /// sha256 of the candidate component.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its manifest (TOML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

impl PluginAction {
    /// The history and event name of the action (`uploaded`, `deleted`, `enabled`, `disabled`, `staged`,
    /// `promoted`, `rolled_back`).
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginAction::Upload { .. } => "uploaded",
            PluginAction::Delete => "deleted",
            PluginAction::Enable => "enabled",
            PluginAction::Disable => "disabled",
            PluginAction::Stage { .. } => "staged",
            PluginAction::Promote { .. } => "promoted",
            PluginAction::Rollback { .. } => "rolled_back",
        }
    }
}

/// A change to a plugin name, by whom.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginChange {
    /// The plugin name.
    pub name: String,
    /// What to do.
    pub action: PluginAction,
    /// The token subject asking.
    pub by: String,
}

/// One entry of a plugin's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginHistoryEntry {
    /// The fleet version this change made.
    pub version: u64,
    /// `uploaded`, `deleted`, `enabled` or `disabled`.
    pub action: String,
    /// The component's sha256 (uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Who (the token's `sub`).
    pub by: String,
    /// When (RFC 3339, store clock).
    pub at: String,
    /// Staged: the mode (`shadow`, `canary 10 %`); rolled back: why, when it was automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the fleet holds for a plugin name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginRecord {
    /// The plugin name.
    pub name: String,
    /// Bumped by every change: servers report the version they applied.
    pub version: u64,
    /// Whether the name may answer calls.
    pub enabled: bool,
    /// sha256 of the current upload, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the current upload in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The current upload's manifest (TOML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// A candidate version in shadow or canary mode, if one is staged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<PluginCandidate>,
    /// The most recent changes, newest first (at most [`PLUGIN_HISTORY`]).
    pub history: Vec<PluginHistoryEntry>,
}

/// Changes kept per plugin name.
pub const PLUGIN_HISTORY: usize = 100;

/// Whether `name` may name a plugin (a file stem or an upload's name): 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Hex sha256 of `bytes`: how plugin versions (and idempotent submits) are identified everywhere.
pub fn sha256_hex(bytes: &[u8]) -> String {
    // Into a buffer: `hex::encode` builds its string a `char` at a time, which cost as much as a third of the
    // hashing on a submit's fingerprint and an audit entry's hash.
    let mut digits = [0u8; 64];
    hex::encode_to_slice(<sha2::Sha256 as sha2::Digest>::digest(bytes), &mut digits).expect("64 digits for 32 bytes");
    String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
}
