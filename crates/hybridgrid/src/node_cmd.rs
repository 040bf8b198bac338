//! The commands that run on a node, not on the user's machine: the node agent, the userspace
//! WireGuard device, the namespace holder. Hidden from `--help`; providers start them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The node agent and the userspace WireGuard device (run on the node): the agent crate's
    /// own commands, the same words as the `hybridgrid-agent` binary's.
    #[command(flatten)]
    Agent(hybridgrid_agent::cli::NodeCommand),
    /// The emulated WAN link of a local site (runs in the cluster's internet namespace).
    #[command(hide = true)]
    WanLink {
        /// The cluster and site it serves (for `observe` and `ps`).
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        site: String,
        /// The site's index: its router's port `r-N`.
        #[arg(long)]
        index: u32,
        #[arg(long)]
        latency_ms: u32,
        #[arg(long)]
        jitter_ms: u32,
        /// Hundredths of a percent.
        #[arg(long)]
        loss_bp: u32,
        #[arg(long)]
        bandwidth_kbit: Option<u64>,
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// The local provider's power service (runs on the host, started by `up`): makes and
    /// removes on-demand workers when Slurm's power programs ask.
    #[command(hide = true)]
    PowerService {
        #[arg(long)]
        tag: String,
        /// The validated cluster (`cluster.json` beside the ledger).
        #[arg(long)]
        cluster: PathBuf,
        #[arg(long)]
        socket: PathBuf,
    },
    /// Holds a node's namespaces open (runs on the node).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        tag: String,
        /// The node's state directory: its supervisor applies `node.json` from there.
        #[arg(long)]
        state_dir: PathBuf,
        /// Seconds between the supervisor's runs; 0: no supervision.
        #[arg(long, default_value_t = 0)]
        period: u64,
        /// The node's hostname: the holder makes the node's machine first (`--tag` names its
        /// network namespace).
        #[arg(long)]
        hostname: Option<String>,
        /// The node's part of Slurm, whose folders the machine gets: controller, compute, none.
        #[arg(long, default_value = "none")]
        slurm: String,
    },
}

pub fn run(cmd: NodeCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::Agent(cmd) => {
            let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
            let line = hybridgrid_agent::cli::run(cmd, &exe, &supervisor_error)?;
            if let Some(line) = line {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::WanLink {
            cluster: _,
            site: _,
            index,
            latency_ms,
            jitter_ms,
            loss_bp,
            bandwidth_kbit,
            tag: _,
        } => {
            hybridgrid_local::wan::run_link(
                index,
                hybridgrid_core::model::Wan {
                    latency_ms,
                    jitter_ms,
                    loss_bp,
                    bandwidth_kbit,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::PowerService {
            tag: _,
            cluster,
            socket,
        } => crate::power_cmd::serve(&cluster, &socket, settings),
        // Holds the namespaces until SIGTERM (default action: exit), supervising the node.
        NodeCommand::Hold {
            tag,
            state_dir,
            period,
            hostname,
            slurm,
        } => {
            if let Some(hostname) = hostname {
                let machine = hybridgrid_local::machine::Machine {
                    netns: tag.clone(),
                    hostname,
                    state_dir: state_dir.clone(),
                    slurm: hybridgrid_local::machine::slurm_of_word(&slurm),
                };
                hybridgrid_local::machine::enter(&machine)
                    .with_context(|| format!("making the machine of {}", machine.hostname))?;
            }
            supervise(&state_dir, &tag, period)
        }
    }
}

/// The node's supervisor (`hold` on local nodes, `agent supervise` under systemd on cloud nodes).
fn supervise(state_dir: &std::path::Path, tag: &str, period: u64) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
    hybridgrid_agent::supervise(
        state_dir,
        &exe,
        tag,
        std::time::Duration::from_secs(period),
        &supervisor_error,
    )
}

/// A failed run of the node's supervisor: it goes on, the error is logged.
fn supervisor_error(e: &hybridgrid_agent::AgentError) {
    eprintln!("supervisor: {}", hybridgrid_agent::error_chain(e));
}
