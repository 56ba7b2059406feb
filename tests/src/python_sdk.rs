//! Python tools from PyPI for the tests: the real `aragora-sdk` client (2.11.0) for compatibility tests, with a runner
//! for the scripts in `tests/fixtures/sdk/` (each prints one JSON document), and `schemathesis`, which generates
//! requests from `docs/openapi.json`. Each lives in a virtual environment built once per machine under the system's
//! temporary folder (an atomic rename publishes it, so concurrent test binaries never see a half-built one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The client version existing Aragora users script with.
pub const SDK_VERSION: &str = "2.11.0";

/// The schemathesis release the API is checked with.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The Python of a virtual environment holding `aragora-sdk` [`SDK_VERSION`]; built on first use (needs `python3`
/// with `venv` and the package index).
pub fn sdk_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| venv_with("aragora-sdk", SDK_VERSION).join("bin/python"))
}

/// `python -m schemathesis.cli` of a virtual environment holding [`SCHEMATHESIS_VERSION`]; built on first use.
pub fn schemathesis() -> Command {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    let python = PYTHON.get_or_init(|| venv_with("schemathesis", SCHEMATHESIS_VERSION).join("bin/python"));
    let mut command = Command::new(python);
    command.args(["-m", "schemathesis.cli"]);
    command
}

/// The folder of a virtual environment holding `package` at `version`, built the first time on this machine.
fn venv_with(package: &str, version: &str) -> PathBuf {
    // The venv is built under another name and renamed: its scripts' `#!` lines name the folder they were built in,
    // so they are run through `bin/python` (a link to the system's interpreter, which does not care where the venv
    // lives).
    crate::built_once(&format!("aragora-cp-{package}-{version}"), "bin/python", |building| {
        run(Command::new("python3").args(["-m", "venv"]).arg(building), "python3 -m venv");
        run(
            Command::new(building.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("{package}=={version}")),
            &format!("pip install {package}"),
        );
    })
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e} (python3 with venv and pip is needed)"));
    assert!(output.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// Runs `tests/fixtures/sdk/SCRIPT` with the SDK against `base_url` (the server root) with `token`, passing `args`;
/// answers the JSON document it prints on its last line.
pub fn run_script(script: &str, base_url: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sdk").join(script);
    let output = Command::new(sdk_python())
        .arg(&path)
        .args(args)
        .env("ARAGORA_API_URL", base_url)
        .env("ARAGORA_API_KEY", token)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}"))
}
