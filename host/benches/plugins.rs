//! `cargo bench -p aragora-cp --bench plugins`: the same measurement as `aragora-cp bench plugins`, for people who
//! reach for `cargo bench`. Prints figures; asserts nothing about speed.

use aragora_cp::cli::OutputFormat;
use aragora_cp::cli::bench::{PluginBenchArgs, plugin_bench, print_plugin_table};

fn main() -> anyhow::Result<()> {
    let args = PluginBenchArgs {
        iterations: 5000,
        fresh_iterations: 500,
        candidates: vec![10, 100, 1000],
        strategies: Vec::new(),
        output: OutputFormat::Text,
    };
    print_plugin_table(&plugin_bench(&args)?);
    Ok(())
}
