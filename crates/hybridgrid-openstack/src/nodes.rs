//! What the openstack provider does on its nodes, over the node channel ([`Channel`]): asks a
//! node what it applied (`hybridgrid-agent agent report`), and configures a booted node — the
//! agent binary (`hybridgrid-agent`, checked by SHA-256 on the node), the node's configuration,
//! the distribution's packages its role needs and its image lacks (`agent install`), the
//! cluster's munge key (mode 0400, on standard input only), `agent apply`, and the agent's
//! supervisor as a systemd service that survives a reboot.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use hybridgrid_agent::NodeReport;
use hybridgrid_core::plan::{NodePlan, Plan, Role, SlurmRole};
use sha2::Digest as _;

use crate::channel::{Channel, Hop, Target, shell_quote};
use crate::error::{OsError, Result};
use crate::login::LoginUsers;
use crate::userdata::{AGENT_PATH, AGENT_STATE_DIR, AGENT_UNIT, PULL_UNIT, agent_unit};
/// The configuration the channel delivers (the supervisor applies it again every period).
const CONFIG: &str = "/var/lib/hybridgrid/node.json";

/// How `plan`'s node `name` is reached: a relay at its floating IP (a pair's relay at its own),
/// a worker through its site's relay, each as its image's login user. `None` while the relay
/// has no floating IP.
pub fn target(plan: &Plan, name: &str, users: &LoginUsers) -> Option<Target> {
    let node = plan.node(name)?;
    if node.is_relay() {
        return Some(Target {
            node: node.name.clone(),
            host: node.reach_ip()?,
            user: users.of(node),
            jump: None,
        });
    }
    let relay = plan.relay_of(&node.site)?;
    Some(Target {
        node: node.name.clone(),
        host: node.lan_ip,
        user: users.of(node),
        jump: Some(Hop {
            node: relay.name.clone(),
            host: relay.reach_ip()?,
            user: users.of(relay),
        }),
    })
}

/// What the node reports; `applied: None` when the agent is not on it yet or never applied.
pub async fn report(channel: &Channel, target: &Target) -> Result<NodeReport> {
    let out = channel
        .run(
            target,
            &format!("{AGENT_PATH} agent report --state-dir {AGENT_STATE_DIR}"),
            b"",
        )
        .await?;
    if out.code != 0 {
        return Ok(NodeReport::default());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| OsError::Channel {
        node: target.node.clone(),
        detail: format!("the agent's report is not valid: {e}"),
    })
}

/// The agent binary the nodes get, with its SHA-256.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub sha256: String,
}

impl AgentBinary {
    /// `exe` stripped (no debug information, no symbol table: the agent is 4.6 MB of the release
    /// build's 37 MB), made once into `cache_dir`; `exe` itself when `objcopy` is not there.
    /// Also the full `hybridgrid` a master with on-demand workers gets.
    pub fn prepare(exe: &Path, cache_dir: &Path) -> Result<AgentBinary> {
        let cache = |p: &Path| {
            let path = p.to_owned();
            move |source| OsError::AgentCache { path, source }
        };
        let meta = std::fs::metadata(exe).map_err(|source| OsError::NoAgentBinary {
            path: exe.to_owned(),
            source,
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        std::fs::create_dir_all(cache_dir).map_err(cache(cache_dir))?;
        let name = exe
            .file_name()
            .map_or_else(|| "binary".into(), |n| n.to_string_lossy().into_owned());
        let stripped = cache_dir.join(format!("{name}-{}-{mtime}", meta.len()));
        if !stripped.is_file() {
            let tmp = stripped.with_extension("part");
            let ok = std::process::Command::new("objcopy")
                .arg("--strip-all")
                .arg(exe)
                .arg(&tmp)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                std::fs::rename(&tmp, &stripped).map_err(cache(&stripped))?;
            } else {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        let path = if stripped.is_file() {
            stripped
        } else {
            exe.to_owned()
        };
        let sha256 = sha256_file(&path)?;
        Ok(AgentBinary { path, sha256 })
    }
}

/// The SHA-256 of the agent's binary at `path`, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let read = |source| OsError::AgentBinaryRead {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The SHA-256 of `bytes`, in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A relay's pairs' preshared keys into its agent's state (0600, standard input only), or none
/// left there when it has no pair.
async fn deliver_preshared_keys(
    channel: &Channel,
    target: &Target,
    keys: Option<String>,
) -> Result<()> {
    let path = format!(
        "{AGENT_STATE_DIR}/{}",
        hybridgrid_engine::preshared::PRESHARED_KEYS_FILE
    );
    channel
        .put_or_remove(
            target,
            "delivering the tunnels' preshared keys",
            (&path, "0600"),
            keys.as_ref().map(String::as_bytes),
        )
        .await
}

/// A relay pair's private key into the relay's own key file (0600 in its 0700 `wg/`, standard
/// input only), where its agent takes its key from; a pair the keys lack is an error.
async fn deliver_pair_key(channel: &Channel, target: &Target, key: Option<&str>) -> Result<()> {
    let key = key.ok_or_else(|| OsError::NoPairKey {
        node: target.node.clone(),
    })?;
    channel
        .put_or_remove(
            target,
            "delivering the relay pair's key",
            (&format!("{AGENT_STATE_DIR}/wg/private.key"), "0600"),
            Some(key.as_bytes()),
        )
        .await
}

/// What the node's role needs from the distribution's packages and its image lacks, installed by
/// the agent (`agent install`, apt from the image's own sources); what it installed and the
/// node's Slurm version. A
/// failure is [`OsError::PackageInstall`] with apt's reason: `up` stops there, since the node
/// cannot take its role without them.
async fn install_packages(
    channel: &Channel,
    target: &Target,
    role: Role,
) -> Result<hybridgrid_agent::packages::InstallReport> {
    let role = role.as_str();
    let out = channel
        .run(
            target,
            &format!("{AGENT_PATH} agent install --config {CONFIG} --role {role}"),
            b"",
        )
        .await?;
    if out.code != 0 {
        let said = out.stderr.trim();
        return Err(OsError::PackageInstall {
            node: target.node.clone(),
            detail: said
                .strip_prefix("hybridgrid-agent: ")
                .unwrap_or(said)
                .to_owned(),
        });
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_default())
}

/// The node's secrets on standard input, each file by its own command, at once (each is a
/// round trip to a slow guest): the munge key for a Slurm node, a relay's tunnel keys, the
/// site's store files.
async fn deliver_secrets(
    channel: &Channel,
    (target, node): (&Target, &NodePlan),
    plan: &Plan,
    secrets: &Secrets,
    slurm_node: bool,
) -> Result<()> {
    let munge = async {
        if !slurm_node {
            return Ok(());
        }
        let key = format!(
            "{AGENT_STATE_DIR}/{}",
            hybridgrid_agent::slurm::MUNGE_KEY_FILE
        );
        channel
            .run_ok(
                target,
                "delivering the munge key",
                &crate::channel::install_stdin(&key, "0400"),
                &secrets.munge_key,
            )
            .await
            .map(drop)
    };
    let tunnel = async {
        let (true, Some(keys)) = (node.is_relay(), &secrets.tunnel_keys) else {
            return Ok(());
        };
        deliver_preshared_keys(channel, target, keys.preshared.for_node(node.mesh_name())).await?;
        match &node.pair {
            Some(pair) => {
                deliver_pair_key(channel, target, keys.pairs.for_pair(&pair.identity)).await
            }
            None => Ok(()),
        }
    };
    let stores = async {
        match &secrets.stores {
            StoreSource::Relay(users) if plan.has_store_data() => {
                crate::store_files::hand_over_from_relay(channel, plan, target, users).await
            }
            StoreSource::Relay(_) => Ok(()),
            StoreSource::Here(files) => {
                crate::store_files::deliver(channel, target, plan, slurm_node, files).await
            }
        }
    };
    tokio::try_join!(munge, tunnel, stores)?;
    Ok(())
}

/// What [`prepare`] did on a node: the agent's steps so far, and the node's Slurm version.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub done: Vec<String>,
    pub slurm_version: Option<String>,
}

/// The first half of configuring a node: the agent binary (sent when the node's differs), the
/// node's configuration, and the packages its role needs (`agent install`), which tell its
/// Slurm version. Nothing of the node's role starts yet.
pub async fn prepare(
    channel: &Channel,
    target: &Target,
    plan: &Plan,
    agent: Option<&AgentBinary>,
) -> Result<Prepared> {
    let node = plan_node(plan, target)?;
    let mut done = Vec::new();
    if let Some(agent) = agent {
        // A worker takes it from its relay, which `offer_agent_on_relay` readied.
        let relay = target
            .jump
            .as_ref()
            .and_then(|hop| plan.node(&hop.node))
            .map(|r| r.lan_ip);
        match send_agent(channel, target, agent, relay).await? {
            Sent::Already => {}
            Sent::OverChannel => done.push(format!("agent {}", &agent.sha256[..12])),
            Sent::FromRelay => done.push(format!("agent {} from its relay", &agent.sha256[..12])),
        }
    }
    let json = serde_json::to_vec_pretty(&plan.node_config(node)).map_err(|source| {
        OsError::NodeConfigJson {
            node: node.name.clone(),
            source,
        }
    })?;
    channel
        .run_ok(
            target,
            "writing the node's configuration",
            &format!(
                "set -e; umask 077; mkdir -p {AGENT_STATE_DIR}; cat > {CONFIG}.part; \
                 mv -f {CONFIG}.part {CONFIG}"
            ),
            &json,
        )
        .await?;
    let report = install_packages(channel, target, node.role).await?;
    if !report.installed_at_boot.is_empty() {
        done.push(format!(
            "installed {} (at first boot)",
            report.installed_at_boot.join(" ")
        ));
    }
    if !report.installed.is_empty() {
        done.push(format!("installed {}", report.installed.join(" ")));
    }
    Ok(Prepared {
        done,
        slurm_version: report.slurm_version,
    })
}

fn plan_node<'p>(plan: &'p Plan, target: &Target) -> Result<&'p NodePlan> {
    plan.node(&target.node)
        .ok_or_else(|| OsError::NodeNotInPlan {
            node: target.node.clone(),
        })
}

/// Where a relay offers its agent binary to the workers of its site (the operator's machine
/// sends it once per site, not once per node).
const DIST_DIR: &str = "/var/lib/hybridgrid/dist";
/// The port on the relay's site address; the site's own nodes only (its security group admits
/// every port from the site's subnet, nothing from elsewhere).
pub const DIST_PORT: u16 = 8790;
/// The transient systemd unit serving [`DIST_DIR`] (Python's standard `http.server`, which a
/// cloud image has for cloud-init), stopped after [`DIST_SECONDS`].
const DIST_UNIT: &str = "hybridgrid-agent-dist";
const DIST_SECONDS: u32 = 3600;

/// How the agent reached a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// It had this very binary.
    Already,
    /// From the operator's machine over the channel.
    OverChannel,
    /// From its relay over the site's network.
    FromRelay,
}

/// Makes sure the relay of `plan`'s site `site` has the agent and offers it to its workers on
/// `DIST_PORT`; how the relay got it.
pub async fn offer_agent_on_relay(
    channel: &Channel,
    relay: &Target,
    lan_ip: std::net::Ipv4Addr,
    agent: &AgentBinary,
) -> Result<Sent> {
    let sent = send_agent(channel, relay, agent, None).await?;
    channel
        .run_ok(
            relay,
            "offering the agent to the site's workers",
            &format!(
                "set -e; mkdir -p {DIST_DIR}; cp -f {AGENT_PATH} {DIST_DIR}/.part; \
                 mv -f {DIST_DIR}/.part {DIST_DIR}/hybridgrid-agent; \
                 command -v python3 >/dev/null || exit 0; \
                 systemctl is-active -q {DIST_UNIT} || \
                 systemd-run -q --unit={DIST_UNIT} --collect -p RuntimeMaxSec={DIST_SECONDS} \
                 python3 -m http.server --bind {lan_ip} --directory {DIST_DIR} {DIST_PORT}; \
                 for i in $(seq 1 60); do curl -fso /dev/null \
                 http://{lan_ip}:{DIST_PORT}/hybridgrid-agent && exit 0; sleep 0.5; done; \
                 echo 'the agent is not offered on {lan_ip}:{DIST_PORT} after 30 s' >&2; exit 1"
            ),
            b"",
        )
        .await?;
    Ok(sent)
}

/// Sends the agent binary unless the node has this very one (by SHA-256): from `relay` (its
/// site address) when given and it answers, else from this machine over the channel.
async fn send_agent(
    channel: &Channel,
    target: &Target,
    agent: &AgentBinary,
    relay: Option<std::net::Ipv4Addr>,
) -> Result<Sent> {
    if has_agent(channel, target, agent).await? {
        return Ok(Sent::Already);
    }
    if let Some(relay) = relay
        && fetch_from(channel, target, agent, relay).await?
    {
        return Ok(Sent::FromRelay);
    }
    push_agent(channel, target, agent).await?;
    Ok(Sent::OverChannel)
}

/// A worker takes the agent from its relay (`relay`: the relay's site address), never over
/// this machine's link; how it has it now (`None`: it could not fetch it).
pub async fn fetch_agent_from_relay(
    channel: &Channel,
    target: &Target,
    agent: &AgentBinary,
    relay: std::net::Ipv4Addr,
) -> Result<Option<Sent>> {
    if has_agent(channel, target, agent).await? {
        return Ok(Some(Sent::Already));
    }
    let fetched = fetch_from(channel, target, agent, relay).await?;
    Ok(fetched.then_some(Sent::FromRelay))
}

/// Whether the node has this very agent binary (by SHA-256).
async fn has_agent(channel: &Channel, target: &Target, agent: &AgentBinary) -> Result<bool> {
    let have = channel
        .run(target, &format!("sha256sum {AGENT_PATH} 2>/dev/null"), b"")
        .await?;
    Ok(have.stdout_text().starts_with(&agent.sha256))
}

/// The partial download's path, and the command that installs it if its SHA-256 is the agent's.
fn check_and_move(agent: &AgentBinary) -> (String, String) {
    let part = format!("{AGENT_PATH}.part");
    let script = format!(
        "echo '{}  {part}' | sha256sum -c --status; chmod 0755 {part}; mv -f {part} {AGENT_PATH}",
        agent.sha256
    );
    (part, script)
}

/// The node downloads the agent from its relay's offer; whether that worked.
async fn fetch_from(
    channel: &Channel,
    target: &Target,
    agent: &AgentBinary,
    relay: std::net::Ipv4Addr,
) -> Result<bool> {
    let (part, install) = check_and_move(agent);
    let fetched = channel
        .run(
            target,
            &format!(
                "set -e; curl -fsS --retry 3 --retry-connrefused --max-time 120 -o {part} \
                 http://{relay}:{DIST_PORT}/hybridgrid-agent; {install}"
            ),
            b"",
        )
        .await?;
    Ok(fetched.code == 0)
}

/// This machine sends the agent over the channel.
async fn push_agent(channel: &Channel, target: &Target, agent: &AgentBinary) -> Result<()> {
    let bytes = tokio::fs::read(&agent.path)
        .await
        .map_err(|source| OsError::AgentBinaryRead {
            path: agent.path.clone(),
            source,
        })?;
    let (part, install) = check_and_move(agent);
    channel
        .run_ok(
            target,
            "installing the agent",
            &format!("set -e; cat > {part}; {install}"),
            &bytes,
        )
        .await?;
    Ok(())
}

/// What a node gets over the channel on standard input only: the cluster's munge key, and
/// its store files (`store_files`).
pub struct Secrets {
    pub munge_key: Vec<u8>,
    pub stores: StoreSource,
    /// The relays' keys (`up`; the power service configures no relay).
    pub tunnel_keys: Option<TunnelKeys>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("stores", &self.stores)
            .field("tunnel_keys", &self.tunnel_keys)
            .finish_non_exhaustive()
    }
}

/// What relays get of the mesh's keys: the tunnels' preshared keys, and a relay pair's one
/// private key (both `Debug` without the keys).
#[derive(Debug)]
pub struct TunnelKeys {
    pub preshared: hybridgrid_engine::preshared::PresharedKeys,
    pub pairs: hybridgrid_engine::pair_keys::PairKeys,
}

/// Where a node's store files come from (`store_files`).
#[derive(Debug)]
pub enum StoreSource {
    /// `up`: this machine sends them.
    Here(crate::store_files::StoreFiles),
    /// The power service, which holds no store keys: its site's relay copies them to a worker
    /// it makes (`store_files::hand_over_from_relay`), the relay reached as these users say.
    Relay(LoginUsers),
}

/// The script that applies the node's configuration and keeps the agent's supervisor running.
///
/// A supervisor still running a replaced agent binary (its exe is `… (deleted)`) would go on
/// applying with the old code: it is restarted, like one whose unit changed. The unit file comes
/// with the user data, so systemd is reloaded only for an older node's: under TCG each reload
/// took 3-4 s, and the three this step made were most of configuring a booted node.
/// `--no-reload`: enabling and disabling only change what the next boot starts.
///
/// A relay's pull timer is stopped first, with a pull it may be running: a relay that got the
/// agent while booting pulls its boot configuration every 30 s, and a pull ending after this
/// apply took the new peers away again until the supervisor's next period.
fn apply_and_supervise(node: &str, wait_for_workers: u64) -> String {
    let unit = shell_quote(&agent_unit(node));
    format!(
        "{{ systemctl disable -q --no-reload {PULL_UNIT}.timer; \
         systemctl stop {PULL_UNIT}.timer {PULL_UNIT}.service; }} 2>/dev/null || true; \
         set -e; {AGENT_PATH} agent apply --config {CONFIG} --state-dir {AGENT_STATE_DIR} \
         --tag {node} --wait-for-workers {wait_for_workers}; \
         u=/etc/systemd/system/{AGENT_UNIT}.service; \
         if [ \"$(cat $u 2>/dev/null)\" != {unit} ]; then printf '%s' {unit} > $u; \
         systemctl daemon-reload; systemctl restart {AGENT_UNIT}.service; \
         elif [ \"$(readlink /proc/$(systemctl show -p MainPID --value {AGENT_UNIT}.service)/exe)\" \
         != {AGENT_PATH} ]; then systemctl restart {AGENT_UNIT}.service; fi; \
         systemctl enable -q --no-reload {AGENT_UNIT}.service; \
         [ -L /etc/hosts ] || ln -sfn {AGENT_STATE_DIR}/hosts /etc/hosts"
    )
}

/// The second half: the munge key on Slurm nodes, the store files, `agent apply`, and the
/// agent's supervisor as a systemd service; what the agent did, after `done`.
pub async fn finish(
    channel: &Channel,
    target: &Target,
    plan: &Plan,
    secrets: &Secrets,
    wait_for_workers: u64,
    mut done: Vec<String>,
) -> Result<Vec<String>> {
    let node = plan_node(plan, target)?;
    let config = plan.node_config(node);
    let slurm_node = node.role != Role::Gateway && config.slurm.role != SlurmRole::None;
    deliver_secrets(channel, (target, node), plan, secrets, slurm_node).await?;
    let out = channel
        .run_ok(
            target,
            "hybridgrid agent apply",
            &apply_and_supervise(&node.name, wait_for_workers),
            b"",
        )
        .await?;
    let text = out.stdout_text();
    let report: hybridgrid_agent::AgentReport = text
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    done.extend(report.actions);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configuring a booted node reloaded systemd three times (3-4 s each under TCG): now only
    /// when the supervisor's unit on the node is not the one the user data wrote.
    #[test]
    fn regression_systemd_is_reloaded_only_for_a_changed_unit() {
        let script = apply_and_supervise("a-worker-1", 0);
        let (changed, rest) = script.split_once("elif").unwrap_or_default();
        assert_eq!(changed.matches("daemon-reload").count(), 1, "{script}");
        assert!(!rest.contains("daemon-reload"), "{script}");
        assert!(
            rest.contains(&format!(
                "systemctl enable -q --no-reload {AGENT_UNIT}.service"
            )),
            "{script}"
        );
        assert!(script.contains(&shell_quote(&agent_unit("a-worker-1"))));
    }

    /// Seen with three workers per site: a relay that got the agent while booting ran its pull
    /// (the boot configuration, every 30 s) during `up`'s apply, and the master lost its peer
    /// until a fourth round. The pull is stopped before the apply starts.
    #[test]
    fn regression_a_pull_cannot_undo_the_apply() {
        let script = apply_and_supervise("b-gw", 0);
        let stop = script
            .find(&format!(
                "systemctl stop {PULL_UNIT}.timer {PULL_UNIT}.service"
            ))
            .unwrap_or(usize::MAX);
        let apply = script.find("agent apply").unwrap_or(0);
        assert!(stop < apply, "{script}");
        assert!(
            script.contains(&format!(
                "systemctl disable -q --no-reload {PULL_UNIT}.timer"
            )),
            "{script}"
        );
    }
}
