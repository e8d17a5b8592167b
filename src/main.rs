#![forbid(unsafe_code)]
//! The `anpi` command: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = anpi::cli::Cli::parse();
    anpi::cli::run(cli)
}
