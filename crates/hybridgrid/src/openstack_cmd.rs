//! Commands for clusters with `provider: openstack`: `up`, `down`, `status`, `plan`'s observed
//! state and `validate --online`, through the `hybridgrid-openstack` crate.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use hybridgrid_core::diff::Observed;
use hybridgrid_core::model::Cluster;
use hybridgrid_core::plan;
use hybridgrid_openstack::{OpenStack, Options, Progress};

use crate::local_cmd::LocalCommand;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open(cluster: &Cluster) -> anyhow::Result<OpenStack> {
    let mut opts = Options::new(hybridgrid_local::state_root());
    // `HYBRIDGRID_AGENT_URL`: where nodes download the hybridgrid binary (else the image has it).
    opts.agent_url = std::env::var("HYBRIDGRID_AGENT_URL").ok();
    Ok(OpenStack::new(cluster, opts)?)
}

fn show(p: Progress) {
    match p {
        Progress::Round { round, changes } => eprintln!("round {round}: {changes} changes"),
        Progress::Applied { summary } => eprintln!("  {summary}"),
        Progress::ServerActive { node, seconds } => {
            eprintln!("  {node} ACTIVE after {seconds:.1}s")
        }
    }
}

/// What exists of the cluster in its clouds, for `plan`.
pub fn observe(cluster: &Cluster) -> anyhow::Result<Observed> {
    let os = open(cluster)?;
    Ok(runtime()?.block_on(os.observe())?)
}

/// Problems `validate --online` finds in the clouds (flavors, images, networks, quotas).
pub fn validate_online(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let os = open(cluster)?;
    let rt = runtime()?;
    let observed = rt.block_on(os.observe())?;
    let plan = plan::plan(cluster, &observed);
    Ok(rt
        .block_on(os.validate_online(&plan))?
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// Runs `cmd` if its cluster file is an openstack cluster; `None` lets the local provider run it.
pub fn intercept(cmd: &LocalCommand) -> anyhow::Result<Option<ExitCode>> {
    let file: &Path = match cmd {
        LocalCommand::Up { file, .. }
        | LocalCommand::Down { file }
        | LocalCommand::Status { file, .. }
        | LocalCommand::Exec { file, .. }
        | LocalCommand::Doctor { file, .. } => file,
        _ => return Ok(None),
    };
    // Read the file once more only to learn its provider; a broken file is reported by the
    // command itself.
    let Ok(loaded) = hybridgrid_core::model::load(file) else {
        return Ok(None);
    };
    let cluster = loaded.cluster;
    if cluster.provider != hybridgrid_core::model::Provider::OpenStack {
        return Ok(None);
    }
    for w in &loaded.warnings.0 {
        eprintln!("{}", w.display(&file.display().to_string()));
    }
    let os = open(&cluster)?;
    let rt = runtime()?;
    let code = match cmd {
        LocalCommand::Up { .. } => {
            let report = rt.block_on(os.up(&show))?;
            if report.applied.is_empty() {
                println!("no changes: the cluster is as planned");
            } else {
                println!(
                    "up: {} changes in {} rounds, {:.1}s; {} servers created",
                    report.applied.len(),
                    report.rounds,
                    report.seconds,
                    report.servers_created.len()
                );
            }
            for node in &report.pending_public_keys {
                eprintln!(
                    "note: {node} has not reported its WireGuard public key on its console yet"
                );
            }
            for node in &report.config_not_delivered {
                eprintln!(
                    "note: {node}: only WireGuard peers are delivered after boot (server metadata); the rest keeps what it booted with"
                );
            }
            for change in &report.not_supported {
                eprintln!("note: not done by `up`: {change} (use `down`)");
            }
            ExitCode::SUCCESS
        }
        LocalCommand::Down { .. } => {
            let report = rt.block_on(os.down())?;
            for d in &report.deleted {
                eprintln!("  - {d}");
            }
            if report.not_deleted.is_empty() {
                println!(
                    "down: deleted {} resources; nothing of the cluster is left",
                    report.deleted.len()
                );
                ExitCode::SUCCESS
            } else {
                for n in &report.not_deleted {
                    eprintln!(
                        "could not delete {} {} at site {} ({}): {}",
                        n.kind,
                        n.name,
                        n.site,
                        n.id.as_deref().unwrap_or("no id"),
                        n.error
                    );
                }
                println!(
                    "down: deleted {}, {} left (listed above); run `down` again",
                    report.deleted.len(),
                    report.not_deleted.len()
                );
                ExitCode::FAILURE
            }
        }
        LocalCommand::Status { json, .. } => {
            let observed = rt.block_on(os.observe())?;
            let plan = plan::plan(&cluster, &observed);
            if *json {
                println!("{}", serde_json::to_string_pretty(&observed)?);
            } else {
                for node in &plan.nodes {
                    let state = if observed.nodes.contains_key(&node.name) {
                        "exists"
                    } else {
                        "missing"
                    };
                    let public = node
                        .public_ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "  {:<24} {:<8} {:<15} {:<15} {state}",
                        node.name,
                        node.role.as_str(),
                        node.lan_ip.to_string(),
                        public
                    );
                }
                println!("{} changes to apply", plan.changes.len());
            }
            ExitCode::SUCCESS
        }
        _ => bail!(
            "{}: this command works on local clusters only so far (openstack: use SSH through the gateway's floating IP)",
            file.display()
        ),
    };
    Ok(Some(code))
}
