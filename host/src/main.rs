//! The `aragora-cp` binary: everything lives in the library's `cli` module.

/// The server allocates and frees many small objects per request on every worker thread; mimalloc's thread-local
/// free lists cost a fraction of glibc's arenas there (docs/BENCHMARKS.md). It is built without its request for
/// transparent huge pages (decision 0028).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    aragora_cp::cli::main()
}
