//! The node commands, shared by the agent's own binary (`hybridgrid-agent`, what cloud nodes
//! get) and the full CLI (`hybridgrid agent …`, what the local provider's nodes run): the same
//! arguments and the same code behind them. Returns what to print; printing and exit codes are
//! the binaries'.

use std::path::{Path, PathBuf};

use hybridgrid_core::plan::{NodeConfig, Role};

use crate::AgentError;

/// The commands that run on a node. The agent starts its own helpers with these words
/// (`wg-userspace`, `agent results-store`) through whichever binary it runs as. Hidden from the
/// full CLI's `--help` ([`VISIBLE`] shows them again in the agent's own binary).
#[derive(Debug, clap::Subcommand)]
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
}

#[derive(Debug, clap::Subcommand)]
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
    /// Install what the node's role needs from the distribution's packages and the node lacks
    /// (apt; nothing runs when everything is there). Prints what it installed and the node's
    /// Slurm version as JSON.
    Install {
        #[arg(long)]
        config: PathBuf,
        /// The node's role (master, gateway, worker): also install what it needs once its
        /// configuration is complete.
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
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
        /// The munge key the cluster's token is derived from (a path; read at every request).
        #[arg(long)]
        munge_key: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// A Slurm power program (slurmctld runs it on the controller with a host list): ask the
    /// power service to make (`resume`) or remove (`suspend`) on-demand workers; a node it cannot
    /// make is set DOWN with the reason. Prints the service's reply as JSON.
    Power {
        #[arg(value_parser = parse_verb)]
        verb: hybridgrid_core::power::PowerVerb,
        /// The power service's Unix socket.
        #[arg(long)]
        service: PathBuf,
        /// Slurm's host list, e.g. `giessen-od-[1-2]`.
        hostlist: String,
    },
    /// keepalived's notify program on a relay of a pair: on a change of VRRP state, apply the
    /// node's configuration again (the active relay gets the tunnel's peers, the standby none)
    /// and, on becoming active, start a handshake with every peer at once.
    RelayState {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
        /// What keepalived appends: type, name, state, priority.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        vrrp: Vec<String>,
    },
    /// slurmctld's prolog (`PrologSlurmctld`) where workers are on demand: wait until none of
    /// the job's nodes (`SLURM_JOB_NODELIST`) is still powering up, so the job starts as soon as
    /// its woken nodes registered.
    WaitNodesReady,
    /// Make the node's next WireGuard key (unless staged already) and print its public half:
    /// the first step of `hybridgrid rotate` (the device is not touched).
    RotateStage {
        #[arg(long)]
        state_dir: PathBuf,
        /// Accepted for the same command line as `rotate-switch`; unused.
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// Switch to what standard input holds (JSON: the configuration with the peers' new keys,
    /// whether to take the staged key, the pairs' preshared keys, the munge key) and apply it:
    /// the second step of `hybridgrid rotate`, on every relay at once.
    RotateSwitch {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "")]
        tag: String,
    },
    /// Print the bytes each site's object store has sent to this node (site → bytes) as JSON.
    StoreReads,
    /// Print the WireGuard device's status as JSON.
    WgStatus {
        #[arg(long, default_value = "wg0")]
        interface: String,
        /// The agent's state directory: the report then has the private key's age.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// The subcommands of [`NodeCommand`], which the agent's own binary shows in its `--help`.
pub const VISIBLE: [&str; 2] = ["agent", "wg-userspace"];

/// Runs `cmd` as the binary `exe`; the line to print on standard output, if any. `log` receives
/// what the supervisor meets while it runs (it never returns).
pub fn run(
    cmd: NodeCommand,
    exe: &Path,
    log: &dyn Fn(&AgentError),
) -> Result<Option<String>, AgentError> {
    match cmd {
        NodeCommand::Agent { command } => agent(command, exe, log),
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
            Ok(None)
        }
    }
}

fn agent(
    cmd: AgentCommand,
    exe: &Path,
    log: &dyn Fn(&AgentError),
) -> Result<Option<String>, AgentError> {
    match cmd {
        AgentCommand::Apply {
            config,
            state_dir,
            tag,
            wait_for_workers,
        } => {
            let config = read_config(&config)?;
            let wait = std::time::Duration::from_secs(wait_for_workers);
            json(&crate::apply(&config, &state_dir, exe, &tag, wait)?)
        }
        AgentCommand::Install { config, role } => {
            let config = read_config(&config)?;
            json(&crate::packages::install_and_report(&config, role)?)
        }
        AgentCommand::Pull {
            metadata_url,
            config,
            state_dir,
            tag,
        } => json(&crate::pull::pull(
            &metadata_url,
            &config,
            &state_dir,
            exe,
            &tag,
        )?),
        AgentCommand::Supervise {
            state_dir,
            tag,
            period,
        } => crate::supervise(
            &state_dir,
            exe,
            &tag,
            std::time::Duration::from_secs(period),
            log,
        ),
        AgentCommand::ResultsStore {
            dir,
            listen,
            allow,
            pid_file,
            munge_key,
            tag: _,
        } => {
            crate::results::serve(&dir, listen, &allow, &pid_file, munge_key)?;
            Ok(None)
        }
        AgentCommand::Report { state_dir } => json(&crate::report(&state_dir)),
        AgentCommand::Power {
            verb,
            service,
            hostlist,
        } => json(&crate::power::run(verb, &service, &hostlist)?),
        AgentCommand::RelayState {
            state_dir,
            tag,
            vrrp,
        } => {
            crate::relay_state::state_changed(&state_dir, exe, &tag, &vrrp)?;
            Ok(None)
        }
        AgentCommand::WaitNodesReady => {
            let nodes = std::env::var("SLURM_JOB_NODELIST").ok();
            crate::power::wait_nodes_ready(nodes.as_deref())?;
            Ok(None)
        }
        AgentCommand::RotateStage { state_dir, tag: _ } => {
            Ok(Some(crate::rotate::stage(&state_dir)?.to_base64()))
        }
        AgentCommand::RotateSwitch { state_dir, tag } => {
            let switch: hybridgrid_core::node::KeySwitch =
                serde_json::from_reader(std::io::stdin().lock()).map_err(|e| {
                    AgentError::SwitchInput {
                        line: e.line(),
                        column: e.column(),
                    }
                })?;
            json(&crate::rotate::switch(&switch, &state_dir, exe, &tag)?)
        }
        AgentCommand::StoreReads => json(&crate::store_reads::read()?),
        AgentCommand::WgStatus {
            interface,
            state_dir,
        } => json(&crate::wg_status(&interface, state_dir.as_deref())?),
    }
}

fn read_config(path: &Path) -> Result<NodeConfig, AgentError> {
    let text = std::fs::read_to_string(path).map_err(AgentError::io(path))?;
    serde_json::from_str(&text).map_err(|source| AgentError::Json {
        path: path.to_owned(),
        source,
    })
}

fn json(value: &impl serde::Serialize) -> Result<Option<String>, AgentError> {
    serde_json::to_string(value)
        .map(Some)
        .map_err(AgentError::encode("the report"))
}

fn parse_verb(text: &str) -> Result<hybridgrid_core::power::PowerVerb, String> {
    use hybridgrid_core::power::PowerVerb;
    [PowerVerb::Resume, PowerVerb::Suspend]
        .into_iter()
        .find(|v| v.as_str() == text)
        .ok_or_else(|| format!("`{text}` is not a power verb: resume or suspend"))
}

fn parse_role(text: &str) -> Result<Role, String> {
    [Role::Master, Role::Gateway, Role::Worker]
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| format!("`{text}` is not a role: master, gateway or worker"))
}
