#![forbid(unsafe_code)]
//! The `anpi` command: parses the command line and hands over to the library.

use clap::Parser;

/// mimalloc: the daemon allocates and frees many small buffers per message (HTTP, JSON,
/// database rows) across threads, where glibc's allocator spends a tenth of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = anpi::cli::Cli::parse();
    anpi::cli::run(cli)
}
