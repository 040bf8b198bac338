//! The cloud-init user data of a node: its part of the plan and the agent that applies it.

use base64::Engine as _;
use hybridgrid_core::plan::{NodePlan, Plan};
use serde_json::{Value, json};

/// Where nodes find the node agent's binary (`hybridgrid-agent`).
pub const AGENT_PATH: &str = "/usr/local/bin/hybridgrid-agent";
pub const NODE_CONFIG_PATH: &str = "/etc/hybridgrid/node.json";
pub const AGENT_STATE_DIR: &str = "/var/lib/hybridgrid";
/// What a relay prints to its console once it made its WireGuard key; the provider reads it
/// through Nova's console-output API.
pub const PUBLIC_KEY_MARKER: &str = "hybridgrid-wg-public-key:";
/// The metadata service relays poll for configuration delivered after boot (`agent pull`).
pub const METADATA_URL: &str = "http://169.254.169.254/openstack/latest/meta_data.json";
/// The systemd service and timer running `hybridgrid agent pull` on relays.
pub const PULL_UNIT: &str = "hybridgrid-pull";
pub const PULL_SECONDS: u32 = 30;
/// The systemd service running the agent's supervisor on every node.
pub const AGENT_UNIT: &str = "hybridgrid-agent";

/// The agent's supervisor as a systemd unit. `KillMode=process`: a restart of the supervisor
/// leaves the daemons it started (WireGuard device, munged, slurmd) running. The user data
/// writes it at first boot; the node channel enables and starts it once it configured the node.
pub fn agent_unit(node: &str) -> String {
    // No newline at the end: the configure script compares it with `$(cat …)`, which drops it.
    format!(
        "[Unit]\nDescription=hybridgrid: keep this node as configured\nAfter=network-online.target\n\n\
         [Service]\nExecStart={AGENT_PATH} agent supervise --state-dir {AGENT_STATE_DIR} --tag {node} --period 10\n\
         Restart=always\nRestartSec=2\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target"
    )
}

/// The user data for `node` when the image already carries the agent at [`AGENT_PATH`].
pub fn user_data(plan: &Plan, node: &NodePlan) -> String {
    user_data_with(plan, node, None, None)
}

/// What a node applies when it boots: its network part (routes, forwarding, and on relays the
/// WireGuard device with the peers known so far). Neither `/etc/hosts` (every node of the
/// cluster: too large for user data at a thousand nodes) nor the Slurm role (it needs the munge
/// key, which never enters user data): both reach the node over the node channel.
pub fn boot_config(plan: &Plan, node: &NodePlan) -> hybridgrid_core::plan::NodeConfig {
    let mut config = plan.node_config_without_hosts(node);
    config.slurm =
        hybridgrid_core::plan::SlurmSetup::none(plan.slurm.controller_addr, plan.slurm.ctld_port);
    config
}

/// The user data for `node`; with `agent_url` the node downloads the hybridgrid binary from there
/// (HTTPS, to [`AGENT_PATH`]) unless the image already has it.
///
/// A `#cloud-config` document (JSON is YAML): writes the node's configuration
/// ([`Plan::node_config`]) to [`NODE_CONFIG_PATH`], runs `hybridgrid agent apply`, and on relays
/// prints the WireGuard public key to the console ([`PUBLIC_KEY_MARKER`]) and installs a systemd
/// timer running `hybridgrid agent pull` every [`PULL_SECONDS`] (peers delivered through the
/// server's metadata after boot). Pure.
///
/// The role's packages the image lacks are installed first, with apt from the image's own
/// sources ([`hybridgrid_agent::packages::boot_script`]); the node's own daemons of munge and
/// Slurm are the agent's to start: their distribution units are disabled. `agent_sha256`: the download must have it, else it is not used.
pub fn user_data_with(
    plan: &Plan,
    node: &NodePlan,
    agent_url: Option<&str>,
    agent_sha256: Option<&str>,
) -> String {
    user_data_for(plan, node, (agent_url, agent_sha256), None)
}

/// [`user_data_with`], and on an on-demand worker `power_key` among the login user's SSH keys:
/// the public key of the power service on the master, which makes the node and reaches it over
/// the mesh (the user's own key comes with the server's keypair).
pub fn user_data_for(
    plan: &Plan,
    node: &NodePlan,
    (agent_url, agent_sha256): (Option<&str>, Option<&str>),
    power_key: Option<&str>,
) -> String {
    let config = boot_config(plan, node);
    let config_json = serde_json::to_string(&config).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(config_json.as_bytes());
    // The role's packages while the rest of the cluster boots (a stock image lacks them); what
    // this leaves missing, the node channel's `agent install` installs or reports.
    let install = hybridgrid_agent::packages::boot_script(&config, Some(node.role));
    let mut runcmd = worker_routes(&config);
    runcmd.extend([
        json!(["sh", "-c", install]),
        json!([
            "sh",
            "-c",
            "systemctl disable -q --now munge slurmd slurmctld 2>/dev/null || true"
        ]),
    ]);
    if let Some(url) = agent_url {
        runcmd.push(agent_download(url, agent_sha256));
    }
    runcmd.extend(agent_apply(&node.name));
    let mut write_files = vec![
        json!({
            "path": NODE_CONFIG_PATH,
            "owner": "root:root",
            "permissions": "0600",
            "encoding": "b64",
            "content": b64,
        }),
        // Written now, while the boot reloads systemd anyway: the node channel then only
        // enables and starts it (a reload costs seconds on a slow guest).
        json!({
            "path": format!("/etc/systemd/system/{AGENT_UNIT}.service"),
            "owner": "root:root",
            "permissions": "0644",
            "content": agent_unit(&node.name),
        }),
    ];
    if node.is_relay() {
        runcmd.push(make_key_without_agent());
        runcmd.push(print_public_key());
        write_files.extend(pull_units(&node.name));
        // One reload for the new units; enabling then needs none.
        let timer = format!("{PULL_UNIT}.timer");
        runcmd.push(json!(["systemctl", "daemon-reload"]));
        runcmd.push(json!(["systemctl", "enable", "--no-reload", timer]));
        runcmd.push(json!(["systemctl", "start", timer]));
    }
    let mut doc = json!({
        "hostname": node.name,
        "preserve_hostname": false,
        "manage_etc_hosts": false,
        "write_files": write_files,
        "runcmd": runcmd,
    });
    if let Some(key) = power_key.filter(|_| node.on_demand) {
        doc["ssh_authorized_keys"] = json!([key.trim()]);
    }
    format!(
        "#cloud-config\n# hybridgrid cluster {}: node {} ({})\n{}\n",
        plan.cluster,
        node.name,
        node.role.as_str(),
        serde_json::to_string(&doc).unwrap_or_default()
    )
}

/// A worker's routes to the other sites through its relay, first of all at boot: the agent may
/// not be on the image, and the master's power service reaches a worker it woke through the
/// mesh before anything configured it. The agent keeps the same routes later.
fn worker_routes(config: &hybridgrid_core::plan::NodeConfig) -> Vec<Value> {
    config
        .routes
        .iter()
        .filter_map(|r| {
            let via = r.via?;
            Some(json!([
                "sh",
                "-c",
                format!("ip route replace {} via {via} || true", r.destination)
            ]))
        })
        .collect()
}

/// Downloads the agent to [`AGENT_PATH`] unless the image has it; with `sha256`, a download
/// that does not have it is not used.
fn agent_download(url: &str, sha256: Option<&str>) -> Value {
    let check = match sha256 {
        Some(sha) => format!("echo '{sha}  {AGENT_PATH}.part' | sha256sum -c --status && "),
        None => String::new(),
    };
    json!([
        "sh",
        "-c",
        format!(
            "test -x {AGENT_PATH} || {{ curl -fsSL --retry 10 -o {AGENT_PATH}.part \"$0\" && \
             {check}chmod 0755 {AGENT_PATH}.part && mv {AGENT_PATH}.part {AGENT_PATH}; }}"
        ),
        url,
    ])
}

/// `agent apply` of the node's configuration, then `/etc/hosts` as the agent's (the node
/// channel delivers every node's address).
fn agent_apply(node: &str) -> [Value; 2] {
    [
        json!([
            AGENT_PATH,
            "agent",
            "apply",
            "--config",
            NODE_CONFIG_PATH,
            "--state-dir",
            AGENT_STATE_DIR,
            "--tag",
            node,
        ]),
        json!([
            "sh",
            "-c",
            format!(
                "test -f {AGENT_STATE_DIR}/hosts && ln -sfn {AGENT_STATE_DIR}/hosts /etc/hosts"
            )
        ]),
    ]
}

/// A relay whose image has no agent yet (a stock image: the agent arrives over the node
/// channel) makes its WireGuard key pair at first boot with `wg` (the role's packages are
/// installed by then), where the agent keeps it: its public key reaches the console, so the plan
/// has the whole mesh when the agent first configures the node (one round less). The private key
/// is made on the node and stays there (0600), as when the agent makes it.
fn make_key_without_agent() -> Value {
    let dir = format!("{AGENT_STATE_DIR}/wg");
    json!([
        "sh",
        "-c",
        format!(
            "test -s {dir}/private.key || {{ command -v wg >/dev/null && umask 077 && \
             mkdir -p {dir} && wg genkey >{dir}/.private.key.tmp && \
             mv {dir}/.private.key.tmp {dir}/private.key; }}; test -s {dir}/public.key || \
             {{ wg pubkey <{dir}/private.key >{dir}/public.key && chmod 0644 {dir}/public.key; }}"
        ),
    ])
}

/// A relay prints its WireGuard public key to the console ([`PUBLIC_KEY_MARKER`]).
fn print_public_key() -> Value {
    json!([
        "sh",
        "-c",
        format!(
            "k=$(cat {AGENT_STATE_DIR}/wg/public.key) && echo \"{PUBLIC_KEY_MARKER} $k\" | \
             tee /dev/console"
        ),
    ])
}

/// The systemd service and timer with which a relay pulls peers that become known after boot
/// from its server's metadata.
fn pull_units(node: &str) -> [Value; 2] {
    [
        json!({
            "path": format!("/etc/systemd/system/{PULL_UNIT}.service"),
            "owner": "root:root",
            "permissions": "0644",
            "content": format!(
                "[Unit]\nDescription=hybridgrid: apply configuration delivered through metadata\n\
                 After=network-online.target\n\n[Service]\nType=oneshot\n\
                 ExecStart={AGENT_PATH} agent pull --metadata-url {METADATA_URL} --config \
                 {NODE_CONFIG_PATH} --state-dir {AGENT_STATE_DIR} --tag {node}\n"
            ),
        }),
        json!({
            "path": format!("/etc/systemd/system/{PULL_UNIT}.timer"),
            "owner": "root:root",
            "permissions": "0644",
            "content": format!(
                "[Unit]\nDescription=hybridgrid: pull configuration every {PULL_SECONDS} s\n\n\
                 [Timer]\nOnActiveSec={PULL_SECONDS}\nOnUnitActiveSec={PULL_SECONDS}\n\
                 AccuracySec=1\n\n[Install]\nWantedBy=timers.target\n"
            ),
        }),
    ]
}

/// The public key a relay printed to its console, if it did.
pub fn public_key_from_console(output: &str) -> Option<String> {
    output.lines().rev().find_map(|l| {
        let rest = &l[l.find(PUBLIC_KEY_MARKER)? + PUBLIC_KEY_MARKER.len()..];
        let key = rest.trim();
        hybridgrid_core::keys::PublicKey::from_base64(key)
            .ok()
            .map(|_| key.to_owned())
    })
}
