//! Commands of the `local` provider (`up`, `status`, `exec`, `down`, `gc`) and the hidden
//! commands that run on nodes (`agent`, `wg-userspace`, `hold`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use hybridgrid_core::diff::Observed;
use hybridgrid_core::model::{Cluster, Provider};
use hybridgrid_core::plan::NodeConfig;
use hybridgrid_local::{Local, Options, Progress, StatusReport};

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Create the cluster, or bring it to what the file says (provider local: on this host).
    Up {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Security groups without connection tracking (for tests of the rules themselves).
        #[arg(long)]
        stateless_security_groups: bool,
    },
    /// Nodes up/down, tunnel handshakes and counters, and who reaches whom.
    Status {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Skip the reachability matrix (it pings every node from every node).
        #[arg(long)]
        no_ping: bool,
    },
    /// Run a command on a node, inside its namespaces: `exec -f FILE NODE -- CMD...`.
    Exec {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove everything of the cluster its ledger lists; safe to run again.
    Down {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Find what is wrong with the running cluster and say how to fix it (exit 1 if anything).
    Doctor {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove leftovers of this host's clusters whose ledger is gone.
    Gc,
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
    },
    /// Holds a node's namespaces open (runs on the node).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        tag: String,
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
    /// Print the WireGuard device's status as JSON.
    WgStatus {
        #[arg(long, default_value = "wg0")]
        interface: String,
    },
}

fn options(stateless_security_groups: bool) -> anyhow::Result<Options> {
    Ok(Options {
        state_root: hybridgrid_local::state_root(),
        exe: std::env::current_exe().context("locating the hybridgrid binary")?,
        stateless_security_groups,
    })
}

pub(crate) fn open(file: &Path, stateless: bool) -> anyhow::Result<Option<Local>> {
    let Some(cluster) = super::load(file)? else {
        return Ok(None);
    };
    if cluster.provider != Provider::Local {
        bail!(
            "{}: provider {} is not handled by this command yet; only `local` is",
            file.display(),
            cluster.provider.as_str()
        );
    }
    Ok(Some(Local::open(&cluster, options(stateless)?)?))
}

/// What exists of a local cluster, for `plan` and `render`; nothing for other providers.
pub fn observe(cluster: &Cluster) -> Observed {
    if cluster.provider != Provider::Local {
        return Observed::default();
    }
    options(false)
        .ok()
        .and_then(|o| Local::open(cluster, o).ok())
        .map(|l| l.observe())
        .unwrap_or_default()
}

fn show(p: Progress) {
    match p {
        Progress::Round { round, changes } => eprintln!("round {round}: {changes} changes"),
        Progress::Done {
            summary,
            seconds,
            details,
        } => {
            let extra = if details.is_empty() {
                String::new()
            } else {
                format!(" — {}", details.join("; "))
            };
            eprintln!("  {seconds:5.2}s {summary}{extra}");
        }
        Progress::Failed { summary, error } => eprintln!("  FAILED {summary}: {error}"),
        Progress::Note(n) => eprintln!("  {n}"),
    }
}

pub fn run(cmd: LocalCommand) -> anyhow::Result<ExitCode> {
    if let Some(code) = crate::openstack_cmd::intercept(&cmd)? {
        return Ok(code);
    }
    match cmd {
        LocalCommand::Up {
            file,
            stateless_security_groups,
        } => {
            let Some(local) = open(&file, stateless_security_groups)? else {
                return Ok(ExitCode::FAILURE);
            };
            let report = local.up(&show)?;
            if report.changes == 0 {
                println!("no changes: the cluster is as planned");
            } else {
                println!(
                    "up: {} changes in {} rounds, {:.1}s",
                    report.changes, report.rounds, report.seconds
                );
            }
            for (a, b) in &report.pending_handshakes {
                eprintln!("warning: no WireGuard handshake yet between {a} and {b}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Status {
            file,
            json,
            no_ping,
        } => {
            let Some(local) = open(&file, false)? else {
                return Ok(ExitCode::FAILURE);
            };
            let report = local.status(!no_ping);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status_text(&report));
            }
            let healthy =
                report.nodes.iter().all(|n| n.up) && report.reachability.iter().all(|r| r.ok);
            if !healthy {
                eprintln!(
                    "hint: run `hybridgrid doctor -f {}` to find out why",
                    file.display()
                );
            }
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LocalCommand::Exec { file, node, cmd } => {
            let Some(local) = open(&file, false)? else {
                return Ok(ExitCode::FAILURE);
            };
            let status = local.exec(&node, &cmd)?;
            Ok(ExitCode::from(
                status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)),
            ))
        }
        LocalCommand::Down { file } => {
            let Some(local) = open(&file, false)? else {
                return Ok(ExitCode::FAILURE);
            };
            let removed = local.down(&show)?;
            if removed == 0 {
                println!("nothing to remove");
            } else {
                println!("down: removed {removed} namespaces and the cluster's state");
            }
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Doctor { file, json } => crate::doctor_cmd::run(&file, json),
        LocalCommand::Gc => {
            let removed = hybridgrid_local::provider::gc(&hybridgrid_local::state_root())?;
            for r in &removed {
                println!("removed {r}");
            }
            if removed.is_empty() {
                println!("nothing to collect");
            }
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Agent { command } => agent(command),
        LocalCommand::WgUserspace { ifname, tag: _ } => {
            hybridgrid_wg::run_userspace_device(
                &ifname,
                &hybridgrid_wg::UserspaceOptions::default(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Hold { tag: _ } => loop {
            // Holds the namespaces until SIGTERM (default action: exit).
            std::thread::park();
        },
    }
}

fn agent(cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Apply {
            config,
            state_dir,
            tag,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config: NodeConfig = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", config.display()))?;
            let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
            let report = hybridgrid_local::agent::apply(&config, &state_dir, &exe, &tag)?;
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
                hybridgrid_local::pull::pull(&metadata_url, &config, &state_dir, &exe, &tag)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::WgStatus { interface } => {
            let status = hybridgrid_local::agent::wg_status(&interface)?;
            println!("{}", serde_json::to_string(&status)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn status_text(r: &StatusReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "cluster {}", r.cluster);
    let _ = writeln!(
        s,
        "  {:<24} {:<12} {:<8} {:<15} {:<12} {:<16} {:<5} slurm",
        "node", "site", "role", "lan", "tunnel", "public", "state"
    );
    for n in &r.nodes {
        let opt =
            |ip: Option<std::net::Ipv4Addr>| ip.map_or_else(|| "-".to_owned(), |i| i.to_string());
        let _ = writeln!(
            s,
            "  {:<24} {:<12} {:<8} {:<15} {:<12} {:<16} {:<5} {}",
            n.name,
            n.site,
            n.role.as_str(),
            n.lan_ip.to_string(),
            opt(n.tunnel_ip),
            opt(n.public_ip),
            if n.up { "up" } else { "DOWN" },
            n.slurm.as_deref().unwrap_or("-")
        );
    }
    if !r.tunnels.is_empty() {
        let _ = writeln!(s, "tunnels:");
        for t in &r.tunnels {
            let hs = t.handshake_age_s.map_or_else(
                || "no handshake".to_owned(),
                |a| format!("handshake {a}s ago"),
            );
            let _ = writeln!(
                s,
                "  {} → {}: {hs}, rx {}, tx {}, endpoint {}",
                t.node,
                t.peer,
                bytes(t.rx_bytes),
                bytes(t.tx_bytes),
                t.endpoint.as_deref().unwrap_or("-")
            );
        }
    }
    if !r.reachability.is_empty() {
        let _ = writeln!(s, "reachability (ping from row to column):");
        let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
        let w = names.iter().map(|n| n.len()).max().unwrap_or(4);
        let _ = write!(s, "  {:w$}", "");
        for (i, _) in names.iter().enumerate() {
            let _ = write!(s, " {:>3}", i + 1);
        }
        s.push('\n');
        for (i, from) in names.iter().enumerate() {
            let _ = write!(s, "  {from:w$}");
            for to in &names {
                let cell = if from == to {
                    "  ·".to_owned()
                } else {
                    match r
                        .reachability
                        .iter()
                        .find(|x| x.from == *from && x.to == *to)
                    {
                        Some(x) if x.ok => "  ✓".to_owned(),
                        Some(_) => "  ✗".to_owned(),
                        None => "  ?".to_owned(),
                    }
                };
                s.push_str(&cell);
            }
            let _ = writeln!(s, "   ({})", i + 1);
        }
    }
    s
}
