//! The rendered cloud-init user data passes `cloud-init schema` (Debian package `cloud-init`;
//! bookworm's 22.4: `cloud-init schema --config-file FILE`).

#![allow(clippy::unwrap_used)] // tests

use std::process::Command;

use hybridgrid_core::diff::Observed;
use hybridgrid_core::model::validate_text;
use hybridgrid_core::plan::{self, NodeConfig};
use hybridgrid_openstack::{
    METADATA_URL, PUBLIC_KEY_MARKER, agent_unit, boot_config, public_key_from_console, user_data,
    user_data_with,
};

fn plan() -> plan::Plan {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/openstack-two-sites.yaml"
    ))
    .unwrap();
    let (c, d) = validate_text(&text);
    hybridgrid_core::reconcile::plan(&c.unwrap_or_else(|| panic!("{d:?}")), &Observed::default())
}

#[test]
fn user_data_passes_cloud_init_schema() {
    let found = Command::new("cloud-init").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "cloud-init is not installed: `apt-get install --no-install-recommends cloud-init`"
    );
    let plan = plan();
    let dir = tempfile::tempdir().unwrap();
    for node in &plan.nodes {
        for (i, ud) in [
            user_data(&plan, node),
            user_data_with(
                &plan,
                node,
                Some("https://example.org/hybridgrid"),
                Some(&"ab".repeat(32)),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(ud.starts_with("#cloud-config\n"));
            let f = dir.path().join(format!("{}-{i}.yaml", node.name));
            std::fs::write(&f, &ud).unwrap();
            let out = Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(&f)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && text.contains("Valid cloud-config"),
                "{}: {text}\n{ud}",
                node.name
            );
        }
    }
}

#[test]
fn user_data_carries_the_node_config() {
    use base64::Engine as _;
    let plan = plan();
    let node = plan.node("giessen-gw").unwrap();
    let ud = user_data(&plan, node);
    let doc: serde_json::Value = serde_json::from_str(
        ud.split_once("\n{")
            .map(|(_, r)| format!("{{{r}"))
            .unwrap()
            .as_str(),
    )
    .unwrap();
    let b64 = doc["write_files"][0]["content"].as_str().unwrap();
    let json = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let config: NodeConfig = serde_json::from_slice(&json).unwrap();
    assert_eq!(config, boot_config(&plan, node));
    // Neither every host of the cluster nor the Slurm role: those come over the node channel.
    assert!(config.hosts.is_empty());
    assert_eq!(config.slurm.role, plan::SlurmRole::None);
    assert!(
        ud.contains("systemctl disable -q --now munge slurmd slurmctld"),
        "{ud}"
    );
    assert_eq!(doc["hostname"], "giessen-gw");
    assert!(ud.contains("agent"), "{ud}");
    assert!(ud.contains(PUBLIC_KEY_MARKER), "relays print their key");
    let worker = plan.node("giessen-worker-1").unwrap();
    assert!(!user_data(&plan, worker).contains(PUBLIC_KEY_MARKER));
    // Relays pull peers delivered later through the server's metadata, every 30 s.
    let files: std::collections::BTreeMap<&str, &str> = doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["content"].as_str().unwrap()))
        .collect();
    let service = files["/etc/systemd/system/hybridgrid-pull.service"];
    assert!(
        service.contains(&format!(
            "agent pull --metadata-url {METADATA_URL} --config /etc/hybridgrid/node.json"
        )),
        "{service}"
    );
    assert!(files["/etc/systemd/system/hybridgrid-pull.timer"].contains("OnUnitActiveSec=30"));
    assert!(ud.contains("hybridgrid-pull.timer"));
    assert!(!user_data(&plan, worker).contains("agent pull"));
}

/// Configuring a booted node made systemd reload three times (the supervisor's new unit, its
/// enabling, the pull timer's disabling): 3-4 s each on a TCG guest, most of that step. The
/// unit now comes with the user data, exactly as the node channel compares it, and the boot
/// reloads once for the relay's own units.
#[test]
fn regression_the_supervisor_unit_comes_with_the_user_data() {
    let plan = plan();
    for node in &plan.nodes {
        let doc = cloud_config(&user_data(&plan, node));
        let unit = doc["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "/etc/systemd/system/hybridgrid-agent.service")
            .unwrap_or_else(|| panic!("{}: no supervisor unit", node.name));
        assert_eq!(unit["content"], agent_unit(&node.name), "{}", node.name);
        let runcmd = doc["runcmd"].to_string();
        let reloads = runcmd.matches("daemon-reload").count();
        assert_eq!(
            reloads,
            usize::from(node.is_relay()),
            "{}: {runcmd}",
            node.name
        );
        let enable_now = r#""enable","--now""#;
        assert!(
            !runcmd.contains(enable_now),
            "{}: it reloads: {runcmd}",
            node.name
        );
    }
}

/// The `#cloud-config` document of user data `ud`.
fn cloud_config(ud: &str) -> serde_json::Value {
    let (_, json) = ud.split_once("\n{").unwrap();
    serde_json::from_str(&format!("{{{json}")).unwrap()
}

#[test]
fn public_key_is_read_from_console_output() {
    let key = hybridgrid_core::keys::PrivateKey::from_seed("console")
        .public_key()
        .to_base64();
    let console = format!("[  5.1] cloud-init[812]: boot\n{PUBLIC_KEY_MARKER} {key}\nlogin: ");
    assert_eq!(public_key_from_console(&console), Some(key));
    assert_eq!(public_key_from_console("FAKE CONSOLE OUTPUT\n"), None);
    assert_eq!(
        public_key_from_console(&format!("{PUBLIC_KEY_MARKER} nonsense")),
        None
    );
}

/// Nova takes 64 KiB of user data; a node's stays far below at any cluster size, because it
/// carries no list of the cluster's hosts (regression: it held every host).
#[test]
fn user_data_of_a_1000_node_plan_is_under_16_kib_for_every_node() {
    let mut text =
        String::from("name: big\nprovider: openstack\ntunnel:\n  cidr: 10.255.0.0/24\nsites:\n");
    for i in 0..10 {
        text.push_str(&format!(
            "  - name: s{i}\n    cloud: c{i}\n    subnet: 10.{i}.0.0/16\n{}    gateway:\n      flavor: f\n      image: img\n    workers:\n      - count: 99\n        flavor: f\n        image: img\n",
            if i == 0 { "    master: true\n" } else { "" }
        ));
    }
    let (c, d) = validate_text(&text);
    let plan = hybridgrid_core::reconcile::plan(
        &c.unwrap_or_else(|| panic!("{d:?}")),
        &Observed::default(),
    );
    assert_eq!(plan.nodes.len(), 1000);
    let largest = plan
        .nodes
        .iter()
        .map(|n| {
            (
                user_data_with(&plan, n, Some("https://example.org/hybridgrid"), None).len(),
                &n.name,
            )
        })
        .max()
        .unwrap();
    assert!(
        largest.0 < 16 * 1024,
        "{} has {} bytes of user data",
        largest.1,
        largest.0
    );
}

/// A worker routes to the other sites through its relay from its first boot, before anything
/// is installed (the image may lack the agent; the master's power service reaches a woken worker
/// over the mesh); an on-demand worker also authorizes the power service's SSH key, a static one
/// does not.
#[test]
fn a_worker_routes_from_first_boot_and_an_on_demand_one_trusts_the_power_service() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/openstack-two-sites.yaml"
    ))
    .unwrap()
    .replace(
        "datasets:",
        "      - { name: od, count: 1, on_demand: true, flavor: de.NBI medium, image: Debian-12 }\ndatasets:",
    );
    let (c, d) = validate_text(&text);
    let plan = hybridgrid_core::reconcile::plan(
        &c.unwrap_or_else(|| panic!("{d:?}")),
        &Observed::default(),
    );
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPower hybridgrid-power";
    let of = |name: &str| {
        let node = plan.node(name).unwrap_or_else(|| panic!("no {name}"));
        hybridgrid_openstack::user_data_for(&plan, node, (None, None), Some(key))
    };
    let woken = of("giessen-od-1");
    assert!(woken.contains(key), "{woken}");
    let route = "ip route replace 10.10.0.0/24 via 10.20.0.5 || true";
    let (before, after) = woken.split_once(route).unwrap_or_else(|| panic!("{woken}"));
    assert!(
        !before.contains("apt-get") && after.contains("apt-get"),
        "{woken}"
    );
    let fixed = of("giessen-worker-1");
    assert!(!fixed.contains(key) && fixed.contains(route), "{fixed}");
    assert!(!of("giessen-gw").contains("ip route replace"));
}
