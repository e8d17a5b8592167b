#![forbid(unsafe_code)]
//! The `anpi` command: parses the command line and hands over to the library.

use clap::Parser;

/// jemalloc, with background threads returning freed memory to the system: a roll call of a
/// whole city allocates and frees hundreds of MB at once, and the default allocator kept
/// fragments of each one.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = anpi::cli::Cli::parse();
    anpi::cli::run(cli)
}
