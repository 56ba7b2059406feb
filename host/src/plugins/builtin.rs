//! The built-in strategies (`least_loaded`, `round_robin`, `random`), policy (`rules_policy`, which runs the rule
//! sets of `POST /policies`) and health probe (`heartbeat_probe`), compiled
//! from `plugins/` by the build script (or taken from `plugins/prebuilt/`, decision 0009) and embedded in the
//! binary; the example plugins `demo` installs (embedded with their manifests); the paths of every guest the build
//! produced (examples and test fixtures).

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The embedded bytes of a built-in strategy.
pub fn builtin_bytes(name: &str) -> Option<&'static [u8]> {
    BUILTIN_STRATEGIES.iter().find(|(builtin, _)| *builtin == name).map(|(_, bytes)| *bytes)
}

/// The embedded bytes of a built-in policy (`rules_policy`, which runs rule sets).
pub fn builtin_policy_bytes(name: &str) -> Option<&'static [u8]> {
    BUILTIN_POLICIES.iter().find(|(builtin, _)| *builtin == name).map(|(_, bytes)| *bytes)
}

/// Whether `name` is a built-in plugin's (a strategy or a probe), which uploads replace only when asked to.
pub fn is_builtin(name: &str) -> bool {
    builtin_bytes(name).is_some() || BUILTIN_PROBES.iter().any(|(probe, _, _)| *probe == name)
}

/// The embedded bytes and manifest text of an example plugin (`cheapest_within_latency`, `payload_size_policy`).
pub fn embedded_example(name: &str) -> Option<(&'static [u8], &'static str)> {
    EMBEDDED_EXAMPLES.iter().find(|(example, _, _)| *example == name).map(|(_, bytes, manifest)| (*bytes, *manifest))
}

/// The path of a guest built from `plugins/` (for tests, benchmarks and examples).
pub fn guest_path(name: &str) -> Option<&'static str> {
    GUEST_ARTIFACTS.iter().find(|(guest, _)| *guest == name).map(|(_, path)| *path)
}

/// The strategy every failed strategy call falls back to.
pub const FALLBACK_STRATEGY: &str = "least_loaded";

/// The WIT package plugin authors build against (copied into crates made by `aragora-cp plugin new`).
pub const WIT: &str = include_str!("../../../wit/control-plane.wit");
