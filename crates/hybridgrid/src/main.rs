//! The `hybridgrid` command line. Architecture invariant: only this crate knows about terminals,
//! standard output and exit codes; everything else returns values and typed errors.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::model::{self, Cluster, LoadError, Provider};
use hybridgrid_core::plan::{self, Plan, Remote, Role};
use hybridgrid_core::render;

mod doctor_cmd;
mod local_cmd;
mod openstack_cmd;
mod submit_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "hybridgrid",
    version,
    about = "Hybrid-cloud compute clusters from one YAML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a cluster file and report every problem at once (exit 1 if any).
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Also ask the clouds: do the clouds, flavors, images and networks exist, and do the
        /// quotas cover the plan (provider openstack).
        #[arg(long)]
        online: bool,
    },
    /// Show what `up` would create or change, without changing anything.
    Plan {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the versioned plan document (docs/plan-json.md) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Write the files each node and site would get into a folder, for review.
    Render {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    #[command(flatten)]
    Local(local_cmd::LocalCommand),
    #[command(flatten)]
    Submit(submit_cmd::SubmitCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file, online } => validate(&file, online),
        Command::Plan { file, json } => {
            let Some(cluster) = load(&file)? else {
                return Ok(ExitCode::FAILURE);
            };
            let plan = plan::plan(&cluster, &observe(&cluster));
            if json {
                println!("{}", plan.to_json());
            } else {
                print!("{}", plan_summary(&plan));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { file, out } => {
            let Some(cluster) = load(&file)? else {
                return Ok(ExitCode::FAILURE);
            };
            let plan = plan::plan(&cluster, &observe(&cluster));
            let files = render::render(&plan);
            write_tree(&out, &files)?;
            println!("wrote {} files to {}", files.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Local(cmd) => local_cmd::run(cmd),
        Command::Submit(cmd) => submit_cmd::run(cmd),
    }
}

/// What exists of the cluster already, as its provider finds it.
fn observe(cluster: &Cluster) -> Observed {
    match cluster.provider {
        Provider::Local => local_cmd::observe(cluster),
        Provider::OpenStack => openstack_cmd::observe(cluster).unwrap_or_else(|e| {
            eprintln!("warning: cannot read the clouds ({e:#}); planning as if nothing existed");
            Observed::default()
        }),
    }
}

fn validate(file: &Path, online: bool) -> anyhow::Result<ExitCode> {
    let Some(cluster) = load(file)? else {
        return Ok(ExitCode::FAILURE);
    };
    if online && cluster.provider == Provider::OpenStack {
        let problems = openstack_cmd::validate_online(&cluster)?;
        for p in &problems {
            eprintln!("{}: error: {p}", file.display());
        }
        if !problems.is_empty() {
            eprintln!(
                "{}: {} problem(s) in the clouds; nothing was created",
                file.display(),
                problems.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let nodes: u64 = cluster.sites.iter().map(|s| 1 + s.worker_count()).sum();
    println!(
        "{}: ok — cluster {}, {} sites, {nodes} nodes{}",
        file.display(),
        cluster.name,
        cluster.sites.len(),
        if online && cluster.provider == Provider::OpenStack {
            "; the clouds have room for it"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads and validates; prints diagnostics. `None` when the file has errors (already reported).
fn load(file: &Path) -> anyhow::Result<Option<Cluster>> {
    let shown = file.display().to_string();
    match model::load(file) {
        Ok(loaded) => {
            eprint!("{}", loaded.warnings.render(&shown));
            Ok(Some(loaded.cluster))
        }
        Err(LoadError::Invalid { diagnostics, .. }) => {
            eprint!("{}", diagnostics.render(&shown));
            eprintln!(
                "{shown}: {} error(s); nothing was created",
                diagnostics.error_count()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_tree(out: &Path, files: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (rel, content) in files {
        let path = out.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn plan_summary(plan: &Plan) -> String {
    let mut s = String::new();
    let relays = plan.nodes.iter().filter(|n| n.role.is_relay()).count();
    let _ = writeln!(
        s,
        "cluster {} ({} provider): {} sites, {} nodes",
        plan.cluster,
        plan.provider.as_str(),
        plan.sites.len(),
        plan.nodes.len()
    );
    let _ = writeln!(
        s,
        "tunnel {} · UDP {} · MTU {} · keepalive {}s · full mesh of {} relays, {} links",
        plan.tunnel.cidr,
        plan.tunnel.port,
        plan.tunnel.mtu,
        plan.tunnel.keepalive,
        relays,
        relays * relays.saturating_sub(1) / 2
    );
    for site in &plan.sites {
        let _ = writeln!(
            s,
            "\nsite {} {}{}",
            site.name,
            site.subnet,
            if site.master { " (master site)" } else { "" }
        );
        for n in plan.nodes.iter().filter(|n| n.site == site.name) {
            let mut extra = String::new();
            if let Some(t) = n.tunnel_ip {
                let _ = write!(extra, "  tunnel {t}");
            }
            if n.role.is_relay() {
                match n.public_ip {
                    Some(ip) => {
                        let _ = write!(extra, "  public {ip}");
                    }
                    None => extra.push_str("  public (allocated by up)"),
                }
            }
            if n.role == Role::Worker {
                let _ = write!(extra, "  {} CPUs, {} MiB", n.cpus, n.memory_mib);
            }
            let _ = writeln!(
                s,
                "  {:<24} {:<8} {:<15}{extra}",
                n.name,
                n.role.as_str(),
                n.lan_ip.to_string()
            );
        }
    }
    if plan.changes.is_empty() {
        s.push_str("\nno changes: the cluster is as planned\n");
    } else {
        let _ = writeln!(s, "\n{} changes:", plan.changes.len());
        // A new group's rules are summed up on the group's line; `--json` lists each one.
        let new_groups: Vec<&str> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateSecurityGroup { group, .. } => Some(group.as_str()),
                _ => None,
            })
            .collect();
        for c in &plan.changes {
            match c {
                Change::AddRule { group, .. } if new_groups.contains(&group.as_str()) => {}
                Change::CreateSecurityGroup { group, .. } => {
                    let rules = plan
                        .changes
                        .iter()
                        .filter(|c| matches!(c, Change::AddRule { group: g, .. } if g == group))
                        .count();
                    let pending = plan
                        .sites
                        .iter()
                        .flat_map(|site| &site.security_groups)
                        .filter(|g| &g.name == group)
                        .flat_map(|g| &g.rules)
                        .filter(|r| matches!(r.remote, Remote::PendingPublicIp(_)))
                        .count();
                    let later = if pending > 0 {
                        format!(" (+{pending} once the peers' public IPs exist)")
                    } else {
                        String::new()
                    };
                    let _ = writeln!(s, "  {} with {rules} rules{later}", c.summary());
                }
                _ => {
                    let _ = writeln!(s, "  {}", c.summary());
                }
            }
        }
    }
    s
}
