//! The one place that maps a cluster file's `provider:` to a provider value; every lifecycle
//! command goes through [`open`] and the engine.

use anyhow::Context as _;
use hybridgrid_core::model::{Cluster, Provider as Kind};
use hybridgrid_engine::Provider;
use hybridgrid_local::Local;
use hybridgrid_openstack::OpenStack;

/// Options of the lifecycle commands that only some providers read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    /// local: security groups without connection tracking (tests of the rules themselves).
    pub stateless_security_groups: bool,
}

fn local_options(knobs: Knobs) -> anyhow::Result<hybridgrid_local::Options> {
    Ok(hybridgrid_local::Options {
        state_root: hybridgrid_local::state_root(),
        exe: std::env::current_exe().context("locating the hybridgrid binary")?,
        // Only the flag changes the style; without it the cluster keeps the one it has.
        stateless_security_groups: knobs.stateless_security_groups.then_some(true),
        agent_period: agent_period()?,
    })
}

/// `HYBRIDGRID_AGENT_PERIOD`: seconds between the node supervisors' runs (default 10; 0: none).
fn agent_period() -> anyhow::Result<std::time::Duration> {
    let secs = match std::env::var("HYBRIDGRID_AGENT_PERIOD") {
        Ok(v) => v
            .parse::<u64>()
            .with_context(|| format!("HYBRIDGRID_AGENT_PERIOD={v}: a number of seconds"))?,
        Err(_) => 10,
    };
    Ok(std::time::Duration::from_secs(secs))
}

fn openstack(cluster: &Cluster) -> anyhow::Result<OpenStack> {
    let mut opts = hybridgrid_openstack::Options::new(hybridgrid_local::state_root());
    // `HYBRIDGRID_AGENT_URL`: where nodes download the agent binary at first boot (else the image
    // has it or the node channel brings it).
    opts.agent_url = std::env::var("HYBRIDGRID_AGENT_URL").ok();
    opts.agent_sha256 = std::env::var("HYBRIDGRID_AGENT_SHA256").ok();
    // `up` installs the node agent's own binary (beside this one) on every node over SSH.
    opts.agent_binary = Some(agent_binary()?);
    // Hidden test knob: servers that never boot (the test bed's fake host) have no SSH.
    if std::env::var("HYBRIDGRID_NODE_CHANNEL").is_ok_and(|v| v == "off") {
        opts.node_channel = false;
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
    if let Some(secs) = std::env::var("HYBRIDGRID_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        opts.boot_timeout = std::time::Duration::from_secs(secs);
    }
    Ok(OpenStack::new(cluster, opts)?)
}

/// The cluster's provider, its state opened (a corrupt ledger is an error naming the file).
pub fn open(cluster: &Cluster, knobs: Knobs) -> anyhow::Result<Box<dyn Provider>> {
    Ok(match cluster.provider {
        Kind::Local => Box::new(Local::open(cluster, local_options(knobs)?)?),
        Kind::OpenStack => Box::new(openstack(cluster)?),
    })
}

/// The OpenStack provider of an openstack cluster, for `validate --online`.
pub fn openstack_of(cluster: &Cluster) -> anyhow::Result<OpenStack> {
    openstack(cluster)
}

/// The node agent's binary, `hybridgrid-agent`, installed beside `hybridgrid` (`cargo build`
/// and `cargo install --path crates/hybridgrid-agent` put it there). `HYBRIDGRID_AGENT_BINARY`
/// names another.
fn agent_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("HYBRIDGRID_AGENT_BINARY") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("locating the hybridgrid binary")?;
    Ok(exe.with_file_name("hybridgrid-agent"))
}
