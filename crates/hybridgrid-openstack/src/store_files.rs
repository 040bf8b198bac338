//! The store files a node gets over the channel: its site's store keys for jobs (`store.env`,
//! 0600, on the Slurm nodes of a site with a store, and on its relay where the site has
//! on-demand workers) and the cluster's store
//! endpoints (`store-endpoints.json`, no secret, on every node: the agent counts what each
//! store sends the node, which `jobs` reports per job).
//!
//! `up` sends both from this machine. The power service on the master holds neither (a site's
//! keys stay at the site, and the master is at another): a worker it makes gets them from its
//! site's relay ([`hand_over_from_relay`]). The master lends the relay its SSH key for that one
//! copy (OpenSSH agent forwarding from an `ssh-agent` of its own, gone after the copy), the relay
//! checks the worker's host key as the master met it and sends the files straight to the worker.
//! `up` authorizes the master's key on those relays ([`authorize_power_key`], from the master's
//! addresses only), so root on the master could read the keys there: the master is trusted
//! anyway (it holds application credentials that make and delete every site's servers). What
//! this keeps is that the keys never travel through the master.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hybridgrid_agent::slurm::STORE_ENV_FILE;
use hybridgrid_agent::store_reads::ENDPOINTS_FILE;
use hybridgrid_core::plan::Plan;

use crate::channel::{Channel, Target, shell_quote};
use crate::error::{OsError, Result};
use crate::userdata::AGENT_STATE_DIR;

/// What `up` sends: each store site's job environment, and the endpoints of all stores.
/// `Debug` shows no key.
pub struct StoreFiles {
    /// Site → the store's environment for jobs (`StoreAccess::job_env`).
    pub envs: BTreeMap<String, String>,
    /// Site → endpoint URL, as JSON; `None`: the cluster has no store.
    pub endpoints: Option<String>,
}

impl std::fmt::Debug for StoreFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFiles")
            .field("sites", &self.envs.keys().collect::<Vec<_>>())
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl StoreFiles {
    pub fn new(accesses: &BTreeMap<String, hybridgrid_core::store::StoreAccess>) -> Self {
        let endpoints: BTreeMap<&str, &str> = accesses
            .iter()
            .map(|(site, a)| (site.as_str(), a.endpoint.as_str()))
            .collect();
        StoreFiles {
            envs: accesses
                .iter()
                .map(|(site, a)| (site.clone(), a.job_env()))
                .collect(),
            endpoints: (!endpoints.is_empty())
                .then(|| serde_json::to_string(&endpoints).unwrap_or_default()),
        }
    }
}

fn state_path(file: &str) -> String {
    format!("{AGENT_STATE_DIR}/{file}")
}

/// Sends `node` its store files; what it should not have is removed.
pub async fn deliver(
    channel: &Channel,
    target: &Target,
    plan: &Plan,
    slurm_node: bool,
    files: &StoreFiles,
) -> Result<()> {
    let node = plan
        .node(&target.node)
        .ok_or_else(|| OsError::NoRelayAddress {
            node: target.node.clone(),
        })?;
    let relay_hands_over = node.is_relay() && site_has_on_demand(plan, &node.site);
    let env = files
        .envs
        .get(&node.site)
        .filter(|_| slurm_node || relay_hands_over);
    for (file, content, mode, what) in [
        (
            STORE_ENV_FILE,
            env,
            "0600",
            "delivering the site's store keys",
        ),
        (
            ENDPOINTS_FILE,
            files.endpoints.as_ref(),
            "0644",
            "delivering the store endpoints",
        ),
    ] {
        let path = state_path(file);
        let bytes = content.map(String::as_bytes);
        channel
            .put_or_remove(target, what, (&path, mode), bytes)
            .await?;
    }
    Ok(())
}

fn site_has_on_demand(plan: &Plan, site: &str) -> bool {
    plan.nodes.iter().any(|n| n.on_demand && n.site == site)
}

/// The files a worker of `site` gets from its relay: the endpoints, and the site's keys where
/// it has a store.
fn handed_over(plan: &Plan, site: &str) -> Vec<&'static str> {
    let mut files = vec![ENDPOINTS_FILE];
    if plan.site_has_store_data(site) {
        files.push(STORE_ENV_FILE);
    }
    files
}

/// The power service's `worker` (reached on its site address) gets the store files its site's
/// relay has, copied by the relay.
pub async fn hand_over_from_relay(
    channel: &Channel,
    plan: &Plan,
    worker: &Target,
    users: &crate::login::LoginUsers,
) -> Result<()> {
    let failed = |detail: String| OsError::Channel {
        node: worker.node.clone(),
        detail: format!("the site's store files from its relay: {detail}"),
    };
    let node = plan
        .node(&worker.node)
        .ok_or_else(|| failed("not in the plan".into()))?;
    let relay = plan
        .relay_of(&node.site)
        .ok_or_else(|| failed("the site has no relay".into()))?;
    let relay_user = users.of(relay);
    let key = channel
        .identity()
        .ok_or_else(|| failed("the power service has no SSH key".into()))?;
    let known = channel.known_host_lines(&worker.node);
    if known.is_empty() {
        return Err(failed("its host key is not known yet".into()));
    }
    let agent = Agent::start(channel.dir(), key).await.map_err(failed)?;
    let at_relay = Target {
        node: relay.name.clone(),
        host: relay.lan_ip,
        user: relay_user.clone(),
        jump: None,
    };
    let alias = channel.host_key_alias(&worker.node);
    let files = handed_over(plan, &node.site);
    let script = copy_script(&relay_user, worker, (&alias, &known), &files);
    let out = channel
        .run_with_agent(&at_relay, &script, agent.socket())
        .await?;
    drop(agent);
    if out.code != 0 {
        return Err(failed(format!(
            "the copy from {} failed (exit {}): {}",
            relay.name, out.code, out.stderr
        )));
    }
    Ok(())
}

/// What the relay runs as its login user: `files` of its agent's state (root's) as a tar stream
/// to the worker, whose host key must be the one the master met (`host`: its alias and
/// known-hosts lines); the worker takes those members only.
fn copy_script(
    relay_user: &str,
    worker: &Target,
    (alias, known): (&str, &[String]),
    files: &[&str],
) -> String {
    let sudo = |s: &str, user: &str| match user {
        "root" => format!("sh -c {}", shell_quote(s)),
        _ => format!("sudo -n sh -c {}", shell_quote(s)),
    };
    let files = files.join(" ");
    let pack = format!("tar -C {AGENT_STATE_DIR} -cf - {files}");
    let unpack =
        format!("umask 077; mkdir -p {AGENT_STATE_DIR}; tar -C {AGENT_STATE_DIR} -xf - {files}");
    // The relay's own ssh failing exits 3, not 255: the master's connection to the relay was fine.
    format!(
        "set -e; k=$(mktemp); trap 'rm -f \"$k\"' EXIT; printf '%s\\n' {lines} > \"$k\"; \
         set +e; {pack} | ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=\"$k\" \
         -o HostKeyAlias={alias} -o ConnectTimeout=15 -o LogLevel=ERROR {login} -- {unpack}; \
         rc=$?; [ $rc -ne 255 ] || rc=3; exit $rc",
        lines = known
            .iter()
            .map(|l| shell_quote(l))
            .collect::<Vec<_>>()
            .join(" "),
        pack = sudo(&pack, relay_user),
        alias = shell_quote(alias),
        login = shell_quote(&format!("{}@{}", worker.user, worker.host)),
        unpack = shell_quote(&sudo(&unpack, &worker.user)),
    )
}

/// `up`: the relays of sites with on-demand workers accept the power service's key, so that
/// it can ask them for [`hand_over_from_relay`]. The master's public key is read on the master.
pub async fn authorize_power_key(
    channel: &Channel,
    plan: &Plan,
    master: &Target,
    target: impl Fn(&str) -> Option<Target>,
) -> Result<()> {
    if !plan.has_store_data() {
        return Ok(());
    }
    let relays: Vec<Target> = plan
        .sites
        .iter()
        .filter(|s| site_has_on_demand(plan, &s.name))
        .filter_map(|s| plan.relay_of(&s.name))
        .filter_map(|r| target(&r.name))
        .collect();
    if relays.is_empty() {
        return Ok(());
    }
    let public = crate::power_host::PowerHost::on_master().public_key_path();
    let out = channel
        .run_ok(
            master,
            "reading the power service's public key",
            &format!("cat {}", public.display()),
            b"",
        )
        .await?;
    let key = out.stdout_text().trim().to_owned();
    let Some(line) = authorized_line(plan, &key) else {
        return Ok(());
    };
    let script = authorize_script(&key, &line);
    for relay in &relays {
        channel
            .run_ok(relay, "authorizing the power service's key", &script, b"")
            .await?;
    }
    Ok(())
}

/// The relays' `authorized_keys` line for the master's key: from the master's own addresses
/// only (its site address, the source of what it sends through the tunnel, and its tunnel
/// address), so that a relay holding the lent key cannot log in to another relay with it.
fn authorized_line(plan: &Plan, key: &str) -> Option<String> {
    let master = plan
        .nodes
        .iter()
        .find(|n| n.role == hybridgrid_core::plan::Role::Master)?;
    let mut from = vec![master.lan_ip.to_string()];
    from.extend(master.tunnel_ip.map(|ip| ip.to_string()));
    Some(format!("from=\"{}\" {key}", from.join(",")))
}

/// Puts `line` into the login user's `authorized_keys` in place of any line with the same key
/// (`grep -v` also ends a last line that had no newline).
fn authorize_script(key: &str, line: &str) -> String {
    let body = key.split_whitespace().nth(1).unwrap_or(key);
    format!(
        "set -e; h=$(getent passwd \"$SUDO_USER\" | cut -d: -f6); h=${{h:-$HOME}}; \
         f=\"$h/.ssh/authorized_keys\"; mkdir -p \"$h/.ssh\"; touch \"$f\"; \
         if ! grep -qxF {line} \"$f\"; then \
         {{ grep -vF {body} \"$f\" || true; printf '%s\\n' {line}; }} > \"$f.hg\"; \
         mv \"$f.hg\" \"$f\"; fi; \
         chown -R \"${{SUDO_USER:-root}}\" \"$h/.ssh\"; chmod 600 \"$f\"",
        line = shell_quote(line),
        body = shell_quote(body),
    )
}

/// A short-lived `ssh-agent` holding one key; killed when dropped.
struct Agent {
    child: tokio::process::Child,
    socket: PathBuf,
}

impl Agent {
    async fn start(dir: &Path, key: &Path) -> std::result::Result<Agent, String> {
        // One socket per hand-over: workers are handed over concurrently.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = dir.join(format!("agent-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let child = tokio::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("ssh-agent: {e}"))?;
        let agent = Agent { child, socket };
        for _ in 0..50 {
            if agent.socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let added = tokio::process::Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("ssh-add: {e}"))?;
        if !added.status.success() {
            return Err(format!(
                "ssh-add: {}",
                String::from_utf8_lossy(&added.stderr).trim()
            ));
        }
        Ok(agent)
    }

    fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_sends_its_store_files_to_the_worker_it_recognises() {
        let worker = Target {
            node: "b-od-1".into(),
            host: "10.82.0.20".parse().unwrap(),
            user: "debian".into(),
            jump: None,
        };
        let known = ["|1|abc ssh-ed25519 AAAA".to_owned()];
        let s = copy_script(
            "debian",
            &worker,
            ("c-b-od-1", &known),
            &[ENDPOINTS_FILE, STORE_ENV_FILE],
        );
        assert!(s.contains("StrictHostKeyChecking=yes"), "{s}");
        assert!(s.contains("HostKeyAlias='c-b-od-1'"), "{s}");
        assert!(s.contains("'debian@10.82.0.20'"), "{s}");
        assert!(
            s.contains("-cf - store-endpoints.json store.env"),
            "the relay sends those two: {s}"
        );
        assert!(
            s.contains("-xf - store-endpoints.json store.env"),
            "the worker takes those two only: {s}"
        );
    }

    #[test]
    fn the_relays_take_the_masters_key_from_the_master_only_and_once() {
        let s = authorize_script(
            "ssh-ed25519 AAAAC3Nz hybridgrid-power",
            "from=\"10.81.0.5,10.0.0.1\" ssh-ed25519 AAAAC3Nz hybridgrid-power",
        );
        assert!(
            s.contains("grep -vF 'AAAAC3Nz'"),
            "an older line of the key goes: {s}"
        );
        assert!(
            s.contains("'from=\"10.81.0.5,10.0.0.1\" ssh-ed25519 AAAAC3Nz hybridgrid-power'"),
            "{s}"
        );
    }

    #[test]
    fn only_the_sites_own_keys_and_every_stores_endpoint() {
        let access = |site: &str| hybridgrid_core::store::StoreAccess {
            site: site.into(),
            endpoint: format!("http://{site}.example:8080"),
            region: site.into(),
            access_key: "ak".into(),
            secret_key: "sk".into(),
            netns: None,
        };
        let files = StoreFiles::new(&BTreeMap::from([("b".into(), access("b"))]));
        assert_eq!(
            files.endpoints.as_deref(),
            Some(r#"{"b":"http://b.example:8080"}"#)
        );
        assert!(files.envs["b"].contains("AWS_SECRET_ACCESS_KEY='sk'"));
    }
}
