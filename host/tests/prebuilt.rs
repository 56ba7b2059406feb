//! The components committed under `plugins/prebuilt/` are what a machine without the `wasm32-wasip2` target embeds
//! (decision 0009), so they must be exactly what the sources build today. This test compares each with the
//! build's own output; `ARAGORA_BLESS_PREBUILT=1 cargo test -p aragora-cp --test prebuilt` rewrites them.

use std::path::Path;

use aragora_cp::plugins::builtin::{BUILTIN_PROBES, BUILTIN_STRATEGIES, EMBEDDED_EXAMPLES, PREBUILT_DIR, guest_path};

fn embedded_names() -> Vec<&'static str> {
    let strategies = BUILTIN_STRATEGIES.iter().map(|(name, _)| *name);
    let with_manifests = BUILTIN_PROBES.iter().chain(EMBEDDED_EXAMPLES).map(|(name, _, _)| *name);
    strategies.chain(with_manifests).collect()
}

#[test]
fn prebuilt_components_equal_a_rebuild_from_source() {
    let bless = std::env::var("ARAGORA_BLESS_PREBUILT").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for name in embedded_names() {
        let built = guest_path(name).unwrap_or_else(|| panic!("{name} was not built"));
        let committed = Path::new(PREBUILT_DIR).join(format!("{name}.wasm"));
        assert_ne!(
            Path::new(built),
            committed,
            "this build embedded the prebuilt {name} (no wasm32-wasip2 target), so it cannot check it against a rebuild"
        );
        let fresh = std::fs::read(built).expect("read the built component");
        if std::fs::read(&committed).ok().as_deref() == Some(fresh.as_slice()) {
            continue;
        }
        if bless {
            std::fs::write(&committed, &fresh).expect("write the prebuilt component");
        } else {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "plugins/prebuilt/ differs from a rebuild for {stale:?}: a guest's source (or the toolchain) changed; run \
         `ARAGORA_BLESS_PREBUILT=1 cargo test -p aragora-cp --test prebuilt` and commit the result"
    );
}
