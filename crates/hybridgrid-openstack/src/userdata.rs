//! The cloud-init user data of a node: its part of the plan and the agent that applies it.

use base64::Engine as _;
use hybridgrid_core::plan::{NodePlan, Plan};
use serde_json::json;

/// Where nodes find the hybridgrid binary.
pub const AGENT_PATH: &str = "/usr/local/bin/hybridgrid";
pub const NODE_CONFIG_PATH: &str = "/etc/hybridgrid/node.json";
pub const AGENT_STATE_DIR: &str = "/var/lib/hybridgrid";
/// What a relay prints to its console once it made its WireGuard key; the provider reads it
/// through Nova's console-output API.
pub const PUBLIC_KEY_MARKER: &str = "hybridgrid-wg-public-key:";

/// The user data for `node` when the image already carries the agent at [`AGENT_PATH`].
pub fn user_data(plan: &Plan, node: &NodePlan) -> String {
    user_data_with(plan, node, None)
}

/// The user data for `node`; with `agent_url` the node downloads the hybridgrid binary from there
/// (HTTPS, to [`AGENT_PATH`]) unless the image already has it.
///
/// A `#cloud-config` document (JSON is YAML): writes the node's configuration
/// ([`Plan::node_config`]) to [`NODE_CONFIG_PATH`], runs `hybridgrid agent apply`, and on relays
/// prints the WireGuard public key to the console ([`PUBLIC_KEY_MARKER`]). Pure.
pub fn user_data_with(plan: &Plan, node: &NodePlan, agent_url: Option<&str>) -> String {
    let config = plan.node_config(node);
    let config_json = serde_json::to_string_pretty(&config).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(config_json.as_bytes());
    let mut runcmd = Vec::new();
    if let Some(url) = agent_url {
        runcmd.push(json!([
            "sh",
            "-c",
            format!(
                "test -x {AGENT_PATH} || {{ curl -fsSL --retry 10 -o {AGENT_PATH}.part \"$0\" && \
                 chmod 0755 {AGENT_PATH}.part && mv {AGENT_PATH}.part {AGENT_PATH}; }}"
            ),
            url,
        ]));
    }
    runcmd.push(json!([
        AGENT_PATH,
        "agent",
        "apply",
        "--config",
        NODE_CONFIG_PATH,
        "--state-dir",
        AGENT_STATE_DIR,
        "--tag",
        node.name,
    ]));
    if node.role.is_relay() {
        runcmd.push(json!([
            "sh",
            "-c",
            format!(
                "k=$(cat {AGENT_STATE_DIR}/wg/public.key) && echo \"{PUBLIC_KEY_MARKER} $k\" | \
                 tee /dev/console"
            ),
        ]));
    }
    let doc = json!({
        "hostname": node.name,
        "preserve_hostname": false,
        "manage_etc_hosts": false,
        "write_files": [{
            "path": NODE_CONFIG_PATH,
            "owner": "root:root",
            "permissions": "0600",
            "encoding": "b64",
            "content": b64,
        }],
        "runcmd": runcmd,
    });
    format!(
        "#cloud-config\n# hybridgrid cluster {}: node {} ({})\n{}\n",
        plan.cluster,
        node.name,
        node.role.as_str(),
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
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
