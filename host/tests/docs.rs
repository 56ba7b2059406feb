//! The documentation's commands, run: every ```sh block of README.md and docs/CONTROL_PLANE.md against a live
//! `aragora-cp serve` (the real binary, memory store, ephemeral port; one fresh server per document).
//!
//! Rules the documents follow (docs/CONTROL_PLANE.md, "About the examples", says the same for readers):
//! - The blocks of one document run in order in one `bash` (`set -euo pipefail`), so a variable set by one block
//!   (`TASK_ID=…`) is there for the next. The environment starts empty but for `PATH` (with this build's
//!   `aragora-cp` first), `HOME`, `SERVER` and `TOKEN` (the live server and its printed admin token) and
//!   `PLUGIN_WASM` (a strategy component built from `plugins/`); `localhost:8080` and `127.0.0.1:8080` in a block
//!   are rewritten to the live address. The working directory is the repository root.
//! - Every block must exit 0, and every `curl` call must get an HTTP status below 400 (a `curl` shell function
//!   records each call's status; the docs also use `--fail-with-body`).
//! - A block whose first line is `# expect: 409 task_cancelled` is an error example: every curl call in it must
//!   get that status, and its output must carry that problem `code`.
//! - A block preceded by `<!-- not run: REASON -->` is skipped and listed; the number of such markers must equal
//!   the number of skipped blocks, so a marker can never hide anything but the block right after it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The documents whose commands are run.
const DOCS: [&str; 2] = ["README.md", "docs/CONTROL_PLANE.md"];
/// Longest a document's blocks may take together.
const DOC_TIMEOUT: Duration = Duration::from_secs(180);
const SKIP_MARKER: &str = "<!-- not run:";

/// One ```sh block.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    /// The reason of a `<!-- not run: … -->` marker right before the fence.
    skip: Option<String>,
    /// `# expect: STATUS [code]` on the first line.
    expect: Option<(u16, Option<String>)>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ sits in the repository").to_path_buf()
}

/// The ```sh blocks of a markdown text; panics on shell blocks under another tag, which would escape the test.
fn sh_blocks(doc: &str, markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let fence = lines[index].trim_start();
        let Some(info) = fence.strip_prefix("```") else {
            index += 1;
            continue;
        };
        let tag = info.split_whitespace().next().unwrap_or("");
        assert!(
            !["bash", "shell", "console", "zsh"].contains(&tag),
            "{doc}:{}: write shell commands as ```sh so this test runs them (found ```{tag})",
            index + 1
        );
        let start = index;
        index += 1;
        let mut body = Vec::new();
        while index < lines.len() && !lines[index].trim_start().starts_with("```") {
            body.push(lines[index]);
            index += 1;
        }
        assert!(index < lines.len(), "{doc}:{}: unclosed code block", start + 1);
        index += 1;
        if tag != "sh" {
            continue;
        }
        let previous = lines[..start].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
        let skip = previous
            .and_then(|l| l.strip_prefix(SKIP_MARKER))
            .map(|rest| rest.trim_end_matches("-->").trim().to_string());
        let expect = body.first().and_then(|first| first.trim().strip_prefix("# expect:")).map(|rest| {
            let mut words = rest.split_whitespace();
            let status = words.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                panic!("{doc}:{}: `# expect:` needs an HTTP status, e.g. `# expect: 409 lease_lost`", start + 2)
            });
            (status, words.next().map(str::to_string))
        });
        blocks.push(Block { line: start + 1, text: body.join("\n"), skip, expect });
    }
    blocks
}

/// A live `aragora-cp serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
    token: String,
    log: PathBuf,
    /// Kept open: the server must never write into a closed pipe.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path) -> Server {
    let log = dir.join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aragora-cp"))
        .arg("serve")
        .env("BIND", "127.0.0.1:0")
        .env("REDIS_URL", "memory://")
        .env("PLUGINS_DIR", dir.join("no-plugins-dir"))
        .env_remove("ARAGORA_JWT_SECRET")
        .env_remove("ARAGORA_JWT_PUBLIC_KEY")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).expect("create the server log"))
        .spawn()
        .expect("aragora-cp serve starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let listening = lines.next().expect("a first line").expect("utf-8");
    let base = listening.strip_prefix("aragora-cp listening on ").expect("the listening line").to_string();
    let token = lines.find_map(|line| line.ok().filter(|l| l.starts_with("ey"))).expect("a printed admin token");
    Server { child, base, token, log, _stdout: lines }
}

/// The `curl` every block calls: the real one, with each call's final HTTP status appended to a log as
/// `<block> <status>` (`000` when no answer came).
const PRELUDE: &str = r#"set -euo pipefail
shopt -s inherit_errexit
curl() {
  local headers status rc=0
  headers="$(mktemp)"
  command curl -D "$headers" "$@" || rc=$?
  status="$(sed -n 's/^HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$headers" | tail -n 1)"
  printf '%s %s\n' "$__doc_block" "${status:-000}" >> "$__doc_statuses"
  rm -f "$headers"
  return "$rc"
}
"#;

/// What running one document found wrong, if anything.
fn run_doc(doc: &str, blocks: &[Block], work: &Path) -> Result<(usize, usize), String> {
    let server = start_server(work);
    let address = server.base.trim_start_matches("http://").to_string();
    let statuses = work.join("statuses");
    let progress = work.join("progress");
    let mut script = String::from(PRELUDE);
    script.push_str(&format!("__doc_statuses='{}'\n", statuses.display()));
    let mut ran = 0;
    for (number, block) in blocks.iter().enumerate() {
        if block.skip.is_some() {
            continue;
        }
        ran += 1;
        let text = block.text.replace("localhost:8080", &address).replace("127.0.0.1:8080", &address);
        script.push_str(&format!(
            "__doc_block={number}\necho 'begin {number}' >> '{p}'\nprintf '\\n@@@ block {number} ({doc}:{line})\\n'\n\
             printf '\\n@@@ block {number} ({doc}:{line})\\n' >&2\n{text}\necho 'end {number}' >> '{p}'\n",
            p = progress.display(),
            line = block.line,
        ));
    }
    fs::write(work.join("script.sh"), &script).unwrap();
    let (stdout_path, stderr_path) = (work.join("stdout"), work.join("stderr"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_aragora-cp")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let plugin = aragora_cp::plugins::builtin::guest_path("cheapest_within_latency").expect("the example strategy");
    let mut shell = Command::new("bash")
        .arg(work.join("script.sh"))
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| work.as_os_str().to_owned()))
        .env("TMPDIR", work)
        .env("SERVER", &server.base)
        .env("TOKEN", &server.token)
        .env("PLUGIN_WASM", plugin)
        .env("PLUGIN_TOML", repo_root().join("plugins/cheapest_within_latency/cheapest_within_latency.toml"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("bash runs");
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = shell.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > DOC_TIMEOUT {
            let _ = shell.kill();
            let _ = shell.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let progress = fs::read_to_string(&progress).unwrap_or_default();
    let statuses = fs::read_to_string(&statuses).unwrap_or_default();
    let transcript = || {
        let log = fs::read_to_string(&server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        format!("--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log (last lines)\n{}", tail.join("\n"))
    };
    let last_begun: Option<usize> =
        progress.lines().filter_map(|l| l.strip_prefix("begin ")).filter_map(|n| n.parse().ok()).next_back();
    let block_at = |number: usize| format!("{doc}:{}", blocks[number].line);
    match exit {
        None => {
            let at = last_begun.map(block_at).unwrap_or_default();
            return Err(format!("{doc}: the blocks did not finish within {DOC_TIMEOUT:?} (at {at})\n{}", transcript()));
        }
        Some(status) if !status.success() => {
            let at = last_begun.map(block_at).unwrap_or_else(|| "before the first block".into());
            return Err(format!("{doc}: the block at {at} exited with {status}\n{}", transcript()));
        }
        Some(_) => {}
    }
    let mut calls = 0;
    for (number, block) in blocks.iter().enumerate().filter(|(_, b)| b.skip.is_none()) {
        let answered: Vec<u16> = statuses
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(n, _)| n.parse() == Ok(number))
            .map(|(_, s)| s.parse().unwrap_or(0))
            .collect();
        calls += answered.len();
        let output = stdout
            .split(&format!("@@@ block {number} ("))
            .nth(1)
            .map(|rest| rest.split("\n@@@ block ").next().unwrap_or(rest))
            .unwrap_or("");
        match &block.expect {
            None => {
                if let Some(bad) = answered.iter().find(|s| !(200..400).contains(*s)) {
                    return Err(format!(
                        "{}: a curl call answered {bad} (statuses {answered:?}); mark error examples with \
                         `# expect: STATUS code`\n{}",
                        block_at(number),
                        transcript()
                    ));
                }
            }
            Some((expected, code)) => {
                if answered.is_empty() || answered.iter().any(|s| s != expected) {
                    return Err(format!(
                        "{}: an error example expected every curl call to answer {expected}, got {answered:?}\n{}",
                        block_at(number),
                        transcript()
                    ));
                }
                if let Some(code) = code
                    && !output.contains(&format!("\"code\":\"{code}\""))
                {
                    return Err(format!(
                        "{}: expected the problem code {code:?} in the output:\n{output}",
                        block_at(number)
                    ));
                }
            }
        }
    }
    // Shown with `--nocapture` (and by the harness on failure): what the reader would see.
    println!("--- {doc}: output of the blocks\n{stdout}");
    Ok((ran, calls))
}

#[test]
fn every_sh_block_of_the_docs_runs_against_a_live_server() {
    let mut failures = Vec::new();
    for doc in DOCS {
        let markdown = fs::read_to_string(repo_root().join(doc)).unwrap_or_else(|e| panic!("read {doc}: {e}"));
        let blocks = sh_blocks(doc, &markdown);
        let skipped: Vec<&Block> = blocks.iter().filter(|b| b.skip.is_some()).collect();
        let markers = markdown.matches(SKIP_MARKER).count();
        assert_eq!(
            skipped.len(),
            markers,
            "{doc}: {markers} `{SKIP_MARKER} … -->` markers but {} skipped blocks: each marker must sit right \
             before the ```sh block it skips",
            skipped.len()
        );
        for block in &skipped {
            println!("{doc}:{}: not run: {}", block.line, block.skip.as_deref().unwrap_or_default());
        }
        let work = tempfile::tempdir().expect("a temporary directory");
        match run_doc(doc, &blocks, work.path()) {
            Ok((ran, calls)) => {
                println!("{doc}: {ran} blocks run ({calls} curl calls checked), {} skipped", skipped.len());
                assert!(ran > 0, "{doc}: no block ran");
            }
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_block_parser_reads_markers_and_expectations() {
    let markdown = "x\n<!-- not run: starts the server -->\n\n```sh\nserve\n```\n```json\n{}\n```\n\
                    ```sh\n# expect: 409 lease_lost\ncurl\n```\n";
    let blocks = sh_blocks("t.md", markdown);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].skip.as_deref(), Some("starts the server"));
    assert_eq!(blocks[0].line, 4);
    assert_eq!(blocks[1].expect, Some((409, Some("lease_lost".to_string()))));
    assert!(blocks[1].skip.is_none());
}
