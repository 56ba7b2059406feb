//! The `aragora-cp` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    aragora_cp::cli::main()
}
