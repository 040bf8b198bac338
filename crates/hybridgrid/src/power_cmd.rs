//! `hybridgrid power-service`: Slurm's power service, on the host for the local provider (see
//! `hybridgrid_local::power`), on the master for openstack (`hybridgrid_openstack::power`). Each
//! request is answered by the engine's `power` with a provider opened afresh (its ledger as it
//! is now).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use hybridgrid_core::model::Cluster;
use hybridgrid_core::power::{PowerReply, PowerRequest};
use hybridgrid_engine::Event;

use crate::providers::{self, Knobs};
use crate::settings::Settings;

/// Serves `socket` until killed (`down` stops it first). Each request in a thread of its own:
/// a wake-up on a cloud takes minutes (a server boots), and Slurm asks again for the next
/// site's nodes meanwhile. The local provider changes a cluster one request at a time all the
/// same (its lock file); on openstack each request touches only its own nodes.
pub fn serve(cluster_file: &Path, socket: &Path, settings: &Settings) -> anyhow::Result<ExitCode> {
    let listener = bind(socket)?;
    let allowed = allowed_uids();
    std::thread::scope(|scope| {
        for stream in listener.incoming() {
            let allowed = &allowed;
            scope.spawn(move || {
                let result = stream
                    .context("accepting a connection")
                    .and_then(|s| answer(s, cluster_file, allowed, settings));
                if let Err(e) = result {
                    eprintln!("power service: {}", crate::error_text(&e));
                }
            });
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// The socket, writable by anyone: who may ask is checked per connection.
fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("opening {} to slurmctld", socket.display()))?;
    Ok(listener)
}

/// root and the user slurmctld runs its programs as.
fn allowed_uids() -> Vec<u32> {
    let slurm = nix::unistd::User::from_name("slurm")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    std::iter::once(0).chain(slurm).collect()
}

fn answer(
    stream: UnixStream,
    cluster_file: &Path,
    allowed: &[u32],
    settings: &Settings,
) -> anyhow::Result<()> {
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the caller's credentials")?;
    anyhow::ensure!(
        allowed.contains(&peer.uid()),
        "refused a request from uid {} (pid {}): only root and slurm may ask",
        peer.uid(),
        peer.pid()
    );
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the request")?;
    let request: PowerRequest = serde_json::from_str(&line).context("reading the request")?;
    eprintln!(
        "power service: {} {:?}",
        request.verb.as_str(),
        request.nodes
    );
    let reply = carry_out(cluster_file, &request, settings)
        .unwrap_or_else(|e| PowerReply::all_failed(&request.nodes, &crate::error_text(&e)));
    eprintln!(
        "power service: done {:?}, failed {:?}",
        reply.done, reply.failed
    );
    let text = serde_json::to_string(&reply).context("writing the reply")?;
    (&stream)
        .write_all(format!("{text}\n").as_bytes())
        .context("answering")
}

fn carry_out(
    cluster_file: &Path,
    request: &PowerRequest,
    settings: &Settings,
) -> anyhow::Result<PowerReply> {
    let text = std::fs::read_to_string(cluster_file)
        .with_context(|| format!("reading {}", cluster_file.display()))?;
    let cluster: Cluster = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cluster", cluster_file.display()))?;
    let knobs = Knobs {
        power_service: true,
        ..Knobs::default()
    };
    let provider = providers::open(&cluster, settings, knobs)?;
    // Wake-ups run side by side, but none while `up`, `down` or `rotate` changes the cluster.
    let dir = settings.cluster_dir(&cluster.name);
    let waiting = |who: &str| eprintln!("power service: waiting for {who}");
    let _shared = hybridgrid_engine::state::operation::OperationLock::shared(&dir, &waiting)?;
    let sink = |e: Event| {
        if let Event::Failed { summary, error } = e {
            eprintln!("power service: {summary}: {error}");
        }
    };
    Ok(hybridgrid_engine::power::power(
        &*provider, &cluster, request, &sink,
    )?)
}
