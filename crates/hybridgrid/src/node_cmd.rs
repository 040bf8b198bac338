//! The commands that run on a node, not on the user's machine: the node agent, the userspace
//! WireGuard device, the namespace holder. Hidden from `--help`; providers start them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use hybridgrid_core::plan::NodeConfig;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The node agent (runs on the node).
    #[command(hide = true)]
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The userspace WireGuard device daemon (runs on the node).
    #[command(hide = true)]
    WgUserspace {
        ifname: String,
        #[arg(long)]
        tag: Option<String>,
        /// Kernel offloads of the data path: all (default), tun, none; for measuring each step.
        #[arg(long, default_value = "all")]
        offload: hybridgrid_wg::Offload,
    },
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
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Apply the node's configuration (JSON NodeConfig) idempotently.
    Apply {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
        /// On the Slurm controller: seconds to wait for every planned worker to register
        /// before setting the partitions.
        #[arg(long, default_value_t = 0)]
        wait_for_workers: u64,
    },
    /// Merge the configuration delivered through the cloud's metadata service (peers) into
    /// `--config` and apply it like `apply` (run every 30 s by a timer on openstack relays).
    Pull {
        #[arg(
            long,
            default_value = "http://169.254.169.254/openstack/latest/meta_data.json"
        )]
        metadata_url: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// Keep the node as configured (a systemd service on cloud nodes): a dead WireGuard device
    /// or Slurm daemon back within a second, `STATE_DIR/node.json` applied every `--period`.
    Supervise {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
        #[arg(long, default_value_t = 10)]
        period: u64,
    },
    /// Print what this node applied (as its live state still shows it) and its WireGuard public
    /// key, as JSON: what the openstack provider's `observe` reads over SSH.
    Report {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// The master's results store (started by the controller's agent).
    ResultsStore {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Sources allowed (repeatable): the cluster's subnets.
        #[arg(long = "allow")]
        allow: Vec<ipnet::Ipv4Net>,
        #[arg(long)]
        pid_file: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// Print the WireGuard device's status as JSON.
    WgStatus {
        #[arg(long, default_value = "wg0")]
        interface: String,
    },
}

pub fn run(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::Agent { command } => agent(command),
        NodeCommand::WgUserspace {
            ifname,
            tag: _,
            offload,
        } => {
            let opts = hybridgrid_wg::UserspaceOptions {
                offload,
                ..hybridgrid_wg::UserspaceOptions::default()
            };
            hybridgrid_wg::run_userspace_device(&ifname, &opts)?;
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
        // Holds the namespaces until SIGTERM (default action: exit), supervising the node.
        NodeCommand::Hold {
            tag,
            state_dir,
            period,
        } => supervise(&state_dir, &tag, period),
    }
}

fn agent(cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Apply {
            config,
            state_dir,
            tag,
            wait_for_workers,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config: NodeConfig = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", config.display()))?;
            let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
            let report = hybridgrid_agent::apply(
                &config,
                &state_dir,
                &exe,
                &tag,
                std::time::Duration::from_secs(wait_for_workers),
            )?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Pull {
            metadata_url,
            config,
            state_dir,
            tag,
        } => {
            let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
            let report =
                hybridgrid_agent::pull::pull(&metadata_url, &config, &state_dir, &exe, &tag)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Supervise {
            state_dir,
            tag,
            period,
        } => supervise(&state_dir, &tag, period),
        AgentCommand::ResultsStore {
            dir,
            listen,
            allow,
            pid_file,
            tag: _,
        } => {
            hybridgrid_agent::results::serve(&dir, listen, &allow, &pid_file)?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Report { state_dir } => {
            println!(
                "{}",
                serde_json::to_string(&hybridgrid_agent::report(&state_dir))?
            );
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::WgStatus { interface } => {
            let status = hybridgrid_agent::wg_status(&interface)?;
            println!("{}", serde_json::to_string(&status)?);
            Ok(ExitCode::SUCCESS)
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
        &|e| eprintln!("supervisor: {e}"),
    )
}
