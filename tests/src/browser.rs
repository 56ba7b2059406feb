//! A real browser for the dashboard's tests: Debian's Chromium (installed with `apt-get` when the machine lacks it)
//! driven by `playwright-core` from the npm registry, at the version `tests/fixtures/browser/package-lock.json`
//! pins. Nothing downloads a browser: playwright only drives the system's Chromium. The npm install happens once
//! per machine under the system's temporary folder and is published by an atomic rename, like the Python
//! environments of [`crate::python_sdk`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The scripts and the lock file.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/browser")
}

/// The Chromium binary, installed from Debian's packages on first use (needs root and the package mirror).
pub fn chromium() -> &'static Path {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string()));
        if !path.is_file() {
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends", "chromium"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            };
            // A fresh machine's package lists may predate the mirror's current Chromium: read them again once.
            if !install() {
                let _ = Command::new("apt-get").args(["update", "-q"]).output();
                assert!(install(), "apt-get install chromium failed (the dashboard tests need Debian's chromium)");
            }
        }
        assert!(path.is_file(), "no Chromium at {}", path.display());
        path
    })
}

/// A folder whose `node_modules` holds `playwright-core`, installed with `npm ci` on first use.
pub fn playwright_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let lock =
            std::fs::read(fixtures().join("package-lock.json")).expect("tests/fixtures/browser/package-lock.json");
        // The folder is named by the lock file's contents, so a new pin installs afresh.
        let digest =
            lock.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        crate::built_once(
            &format!("aragora-cp-playwright-{digest:016x}"),
            "node_modules/playwright-core/package.json",
            |building| {
                std::fs::create_dir_all(building).expect("create the npm folder");
                for file in ["package.json", "package-lock.json"] {
                    std::fs::copy(fixtures().join(file), building.join(file)).expect("copy the npm manifest");
                }
                let output = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(building)
                    .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
                    .output()
                    .unwrap_or_else(|e| panic!("npm ci: {e} (Node.js and npm are needed)"));
                assert!(output.status.success(), "npm ci failed:\n{}", String::from_utf8_lossy(&output.stderr));
            },
        )
    })
}

/// Runs `node tests/fixtures/browser/SCRIPT SCENARIO` with `env` plus `CHROMIUM` and `PLAYWRIGHT_HOME`; panics with
/// its output unless it succeeds, and answers what it printed.
pub async fn run(script: &str, scenario: &str, env: &[(&str, String)]) -> String {
    // The installs block (apt-get, npm): off the runtime's threads.
    let (chromium, home) = tokio::task::spawn_blocking(|| (chromium().to_path_buf(), playwright_home().to_path_buf()))
        .await
        .expect("installing the browser");
    let mut command = tokio::process::Command::new("node");
    command.arg(fixtures().join(script)).arg(scenario).env("CHROMIUM", chromium).env("PLAYWRIGHT_HOME", home);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.kill_on_drop(true).output().await.unwrap_or_else(|e| panic!("node {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} {scenario} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
