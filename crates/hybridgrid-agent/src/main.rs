//! `hybridgrid-agent`: the node agent's own binary, what cloud nodes get (the full `hybridgrid`
//! carries the OpenStack SDK, the manual page and the rest of the CLI, which a node never runs).
//! The same node commands as `hybridgrid agent …` and `hybridgrid wg-userspace`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary: it prints and picks exit codes

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

#[derive(Debug, clap::Parser)]
#[command(
    name = "hybridgrid-agent",
    version,
    about = "The hybridgrid node agent"
)]
struct Args {
    #[command(subcommand)]
    command: hybridgrid_agent::cli::NodeCommand,
}

fn main() -> ExitCode {
    let mut command = Args::command();
    for name in hybridgrid_agent::cli::VISIBLE {
        command = command.mut_subcommand(name, |c| c.hide(false));
    }
    let args = match Args::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("hybridgrid-agent: cannot locate its own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    match hybridgrid_agent::cli::run(args.command, &exe, &|e| {
        eprintln!("supervisor: {}", hybridgrid_agent::error_chain(e));
    }) {
        Ok(Some(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hybridgrid-agent: {}", hybridgrid_agent::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
