//! The one place that maps a cluster file's `provider:` to a provider value, its options built
//! from the run's [`Settings`]; every lifecycle command goes through [`open`] and the engine.

use anyhow::Context as _;
use hybridgrid_core::model::{Cluster, Provider as Kind};
use hybridgrid_engine::Provider;
use hybridgrid_local::Local;
use hybridgrid_openstack::OpenStack;

use crate::settings::Settings;

/// Options of the lifecycle commands that only some providers read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    /// local: security groups without connection tracking (tests of the rules themselves).
    pub stateless_security_groups: bool,
    /// The run is Slurm's power service (on openstack: on the master, see
    /// `hybridgrid_openstack::power`).
    pub power_service: bool,
}

fn local_options(settings: &Settings, knobs: Knobs) -> anyhow::Result<hybridgrid_local::Options> {
    Ok(hybridgrid_local::Options {
        state_root: settings.state_root.clone(),
        exe: std::env::current_exe().context("locating the hybridgrid binary")?,
        // Only the flag changes the style; without it the cluster keeps the one it has.
        stateless_security_groups: knobs.stateless_security_groups.then_some(true),
        agent_period: settings.agent_period,
    })
}

fn openstack_options(
    settings: &Settings,
    knobs: Knobs,
) -> anyhow::Result<hybridgrid_openstack::Options> {
    let mut opts = hybridgrid_openstack::Options::new(settings.state_root.clone());
    opts.clouds_file.clone_from(&settings.clouds_file);
    opts.home.clone_from(&settings.home);
    opts.agent_url.clone_from(&settings.agent_url);
    opts.agent_sha256.clone_from(&settings.agent_sha256);
    // `up` installs the node agent's own binary (beside this one) on every node over SSH.
    opts.agent_binary = Some(agent_binary(settings)?);
    opts.node_channel = settings.node_channel;
    // A cluster with on-demand workers gets this binary on its master, for the power service.
    opts.power_binary = std::env::current_exe().ok();
    if knobs.power_service {
        opts.power_host = Some(hybridgrid_openstack::PowerHost::on_master());
    }
    if let Some(timeout) = settings.boot_timeout {
        opts.boot_timeout = timeout;
    }
    // `-v`: every API call, with its cloud, duration and a failure's status.
    if tracing::enabled!(tracing::Level::DEBUG) {
        opts.trace = Some(hybridgrid_openstack::CallTrace(std::sync::Arc::new(
            |c: &hybridgrid_openstack::CallTiming<'_>| {
                let failed = c
                    .failed_status
                    .map(|s| format!(" → {s}"))
                    .unwrap_or_default();
                tracing::debug!("  api {} {} {:.2}s{failed}", c.cloud, c.what, c.seconds);
            },
        )));
    }
    Ok(opts)
}

/// The cluster's provider, its state opened (a corrupt ledger is an error naming the file).
pub fn open(
    cluster: &Cluster,
    settings: &Settings,
    knobs: Knobs,
) -> anyhow::Result<Box<dyn Provider>> {
    Ok(match cluster.provider {
        Kind::Local => Box::new(Local::open(cluster, local_options(settings, knobs)?)?),
        Kind::OpenStack => Box::new(openstack_with(cluster, settings, knobs)?),
    })
}

/// The OpenStack provider of an openstack cluster (also for `validate --online`).
pub fn openstack_of(cluster: &Cluster, settings: &Settings) -> anyhow::Result<OpenStack> {
    openstack_with(cluster, settings, Knobs::default())
}

fn openstack_with(
    cluster: &Cluster,
    settings: &Settings,
    knobs: Knobs,
) -> anyhow::Result<OpenStack> {
    Ok(OpenStack::new(
        cluster,
        openstack_options(settings, knobs)?,
    )?)
}

/// The node agent's binary: `HYBRIDGRID_AGENT_BINARY`, else `hybridgrid-agent` installed beside
/// `hybridgrid` (`cargo build` and `cargo install --path crates/hybridgrid-agent` put it there).
fn agent_binary(settings: &Settings) -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = &settings.agent_binary {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
    Ok(exe.with_file_name("hybridgrid-agent"))
}
