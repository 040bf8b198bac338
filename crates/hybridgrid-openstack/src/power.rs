//! On-demand workers on openstack: Slurm's power service runs on the master.
//!
//! slurmctld's power programs (the agent's `power` command) ask the cluster's power service
//! over a Unix socket on the master; the service is the full `hybridgrid` (`power-service`)
//! with this provider in [`crate::PowerHost`] mode: it makes and removes only on-demand workers,
//! through the same `apply` as `up`, and reaches them directly on their site address over the
//! mesh (the master routes every site's network), as root with an SSH key of its own that the
//! new worker's user data authorizes.
//!
//! `up` gives the master what the service needs ([`OpenStack::ensure_power_service`]), over
//! the node channel only: the `hybridgrid` binary, the validated cluster, and per cloud entry a
//! Keystone application credential made from the user's credentials (a `clouds.yaml`, 0600).
//! The master's SSH key is made on the master and never leaves it; the munge key is the
//! master's own copy. `down` stops the service first and deletes the credentials.

use std::collections::BTreeSet;
use std::path::PathBuf;

use hybridgrid_core::plan::Plan;
use hybridgrid_engine::{Event, Sink};
use serde_json::json;

use crate::api::{Cloud, Req};
use crate::channel::{Channel, Target, install_stdin};
use crate::error::{OsError, Result, Service};
use crate::nodes::sha256_hex;
use crate::power_host::{POWER_BINARY, POWER_CONFIG_DIR, POWER_STATE_DIR, POWER_UNIT, SSH_KEY};
use crate::provider::OpenStack;
use crate::site::SiteOps;

/// The name of the application credential the master gets for cloud entry `cloud`.
pub fn credential_name(cluster: &str, cloud: &str) -> String {
    format!("{cluster}-power-{cloud}")
}

/// What the master has of the service, as the check script prints it.
#[derive(Debug, Default)]
struct OnMaster {
    cluster_sha: String,
    binary_sha: String,
    unit_sha: String,
    has_clouds: bool,
    active: bool,
}

const CHECK: &str = "f() { sha256sum \"$1\" 2>/dev/null | cut -d' ' -f1; }; \
    echo \"cluster=$(f /etc/hybridgrid/power/cluster.json)\"; \
    echo \"binary=$(f /usr/local/bin/hybridgrid)\"; \
    echo \"unit=$(f /etc/systemd/system/hybridgrid-power.service)\"; \
    echo \"clouds=$(test -s /etc/hybridgrid/power/clouds.yaml && echo yes)\"; \
    echo \"active=$(systemctl is-active hybridgrid-power 2>/dev/null)\"";

impl OnMaster {
    /// Whether a service or its credentials are there.
    fn is_set_up(&self) -> bool {
        self.active || self.has_clouds
    }

    fn parse(text: &str) -> Self {
        let mut m = OnMaster::default();
        for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
            match k {
                "cluster" => m.cluster_sha = v.to_owned(),
                "binary" => m.binary_sha = v.to_owned(),
                "unit" => m.unit_sha = v.to_owned(),
                "clouds" => m.has_clouds = v == "yes",
                "active" => m.active = v == "active",
                _ => {}
            }
        }
        m
    }
}

/// The unit running the service of `cluster` on the master.
fn unit(cluster: &str) -> String {
    let socket = hybridgrid_core::power::power_socket(cluster);
    format!(
        "[Unit]\nDescription=hybridgrid: Slurm's power service of cluster {cluster}\n\
         After=network-online.target\n\n[Service]\n\
         Environment=HOME=/root\nEnvironment=HYBRIDGRID_STATE_DIR={POWER_STATE_DIR}\n\
         Environment=OS_CLIENT_CONFIG_FILE={POWER_CONFIG_DIR}/clouds.yaml\n\
         ExecStartPre=/bin/sh -c 'test -f {POWER_STATE_DIR}/{SSH_KEY} || ssh-keygen -q -t ed25519 -N \"\" -C hybridgrid-power -f {POWER_STATE_DIR}/{SSH_KEY}'\n\
         ExecStart={POWER_BINARY} power-service --tag hg-{cluster}-power \
         --cluster {POWER_CONFIG_DIR}/cluster.json --socket {socket}\n\
         Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

impl OpenStack {
    /// With on-demand workers: the master runs the power service with what it needs, each part
    /// sent only when the master lacks it. Without: a service left from when the cluster had
    /// some is stopped and its credentials deleted.
    pub(crate) async fn ensure_power_service(&self, plan: &Plan, sink: Sink<'_>) -> Result<()> {
        if self.opts.power_host.is_some() {
            return Ok(());
        }
        let Some(target) = self.master_target(plan) else {
            return Ok(());
        };
        let channel = self.channel();
        let read = channel.run_ok(&target, "reading the power service", CHECK, b"");
        if plan.slurm.power.is_none() {
            // Best effort: a cluster without on-demand workers does not need its master for this.
            let left = read
                .await
                .is_ok_and(|o| OnMaster::parse(&o.stdout_text()).is_set_up());
            if left {
                let sites = self.connected().await?;
                self.retire_power_service(Some(&target), sites, sink).await;
            }
            return Ok(());
        }
        let seen = OnMaster::parse(&read.await?.stdout_text());
        let sent = self.send_missing(&channel, &target, &seen, sink).await?;
        let unit = unit(&self.cluster.name);
        if seen.unit_sha == sha256_hex(unit.as_bytes()) && sent.is_empty() && seen.active {
            return self.authorize_on_relays(&channel, plan, &target).await;
        }
        let path = format!("/etc/systemd/system/{POWER_UNIT}.service");
        let script = format!(
            "{}; mkdir -p {POWER_STATE_DIR}; systemctl daemon-reload; \
             systemctl enable -q {POWER_UNIT}; systemctl restart {POWER_UNIT}",
            install_stdin(&path, "0644")
        );
        channel
            .run_ok(
                &target,
                "starting the power service",
                &script,
                unit.as_bytes(),
            )
            .await?;
        let what = match sent.is_empty() {
            true => String::new(),
            false => format!(" (sent {})", sent.join(", ")),
        };
        sink(Event::Note(format!(
            "power service on {}{what}",
            target.node
        )));
        self.authorize_on_relays(&channel, plan, &target).await
    }

    /// The relays of sites with on-demand workers accept the service's key: its workers get
    /// their site's store files from there (`store_files`).
    async fn authorize_on_relays(
        &self,
        channel: &Channel,
        plan: &Plan,
        master: &Target,
    ) -> Result<()> {
        crate::store_files::authorize_power_key(channel, plan, master, |n| self.target(plan, n))
            .await
    }

    /// What the master lacks of the service's files, sent; their names.
    async fn send_missing(
        &self,
        channel: &Channel,
        target: &Target,
        seen: &OnMaster,
        sink: Sink<'_>,
    ) -> Result<Vec<&'static str>> {
        let mut sent = Vec::new();
        let cluster = self.power_cluster_json()?;
        if seen.cluster_sha != sha256_hex(&cluster) {
            let path = format!("{POWER_CONFIG_DIR}/cluster.json");
            let script = install_stdin(&path, "0600");
            channel
                .run_ok(target, "sending the cluster", &script, &cluster)
                .await?;
            sent.push("the cluster");
        }
        let cache = self.opts.state_root.join(&self.cluster.name).join("power");
        let binary = crate::nodes::AgentBinary::prepare(&self.power_binary()?, &cache)?;
        if seen.binary_sha != binary.sha256 {
            let bytes = std::fs::read(&binary.path).map_err(|source| OsError::AgentBinaryRead {
                path: binary.path.clone(),
                source,
            })?;
            let script = install_stdin(POWER_BINARY, "0755");
            channel
                .run_ok(target, "sending hybridgrid", &script, &bytes)
                .await?;
            sent.push("hybridgrid");
        }
        if !seen.has_clouds {
            let clouds = self.power_clouds_yaml(sink).await?;
            let script = install_stdin(&format!("{POWER_CONFIG_DIR}/clouds.yaml"), "0600");
            channel
                .run_ok(
                    target,
                    "sending the application credentials",
                    &script,
                    clouds.as_bytes(),
                )
                .await?;
            sent.push("application credentials");
        }
        Ok(sent)
    }

    /// `down`'s first step: the master's power service stops (no node is made after it), then
    /// the credentials it had are deleted.
    pub(crate) async fn stop_power_service(&self, sites: &[SiteOps], sink: Sink<'_>) {
        let plan = match self.opts.node_channel {
            true => self.plan_from_clouds(sites).await.ok(),
            false => None,
        };
        let target = plan.and_then(|p| self.master_target(&p));
        self.retire_power_service(target.as_ref(), sites, sink)
            .await;
    }

    /// Stops the service on the master (`target`) and deletes the credentials it had. Best
    /// effort: a master that does not answer is gone with its service, or cut off from the
    /// clouds once its credentials are.
    async fn retire_power_service(
        &self,
        target: Option<&Target>,
        sites: &[SiteOps],
        sink: Sink<'_>,
    ) {
        if let Some(target) = target {
            let stop = format!(
                "systemctl disable -q --now {POWER_UNIT} 2>/dev/null; rm -f {POWER_CONFIG_DIR}/clouds.yaml; true"
            );
            let stopped = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                self.channel().run(target, &stop, b""),
            )
            .await;
            if matches!(stopped, Ok(Ok(ref o)) if o.code == 0) {
                sink(Event::Note(format!(
                    "power service on {} stopped",
                    target.node
                )));
            }
        }
        let mut done = BTreeSet::new();
        for ops in sites {
            if done.insert(ops.cloud.name.clone()) {
                self.delete_power_credential(ops, sink).await;
            }
        }
    }

    async fn delete_power_credential(&self, ops: &SiteOps, sink: Sink<'_>) {
        let name = credential_name(&self.cluster.name, &ops.cloud.name);
        let cloud = &ops.cloud.name;
        match delete_credentials(&ops.cloud, &name).await {
            Ok(0) => {}
            Ok(_) => sink(Event::Note(format!(
                "{cloud}: application credential {name} deleted"
            ))),
            Err(e) => sink(Event::Note(format!(
                "{cloud}: application credential {name} not deleted: {}",
                hybridgrid_core::error_chain(&e)
            ))),
        }
    }

    /// The cluster as the service reads it: the file's, with the SSH public key itself rather
    /// than a path on this machine.
    fn power_cluster_json(&self) -> Result<Vec<u8>> {
        let mut cluster = self.cluster.clone();
        cluster.ssh_public_key = self.ssh_public_key()?;
        serde_json::to_vec_pretty(&cluster).map_err(|source| OsError::NodeConfigJson {
            node: "the power service's cluster".into(),
            source,
        })
    }

    fn power_binary(&self) -> Result<PathBuf> {
        self.opts
            .power_binary
            .clone()
            .ok_or_else(|| OsError::NoPowerBinary)
    }

    /// A `clouds.yaml` for the master: per cloud entry of the cluster a new application
    /// credential (one of the same name is replaced: its secret is shown only when made),
    /// restricted to what the service calls where the cloud checks access rules.
    async fn power_clouds_yaml(&self, sink: Sink<'_>) -> Result<String> {
        let config = crate::api::load_config(self.opts.clouds_file.as_deref())?;
        let mut clouds = serde_json::Map::new();
        for ops in self.connected().await? {
            if clouds.contains_key(&ops.cloud.name) {
                continue;
            }
            let profile = config
                .get_cloud_config(&ops.cloud.name)
                .ok()
                .flatten()
                .ok_or_else(|| OsError::NoCloud {
                    site: ops.site.name.clone(),
                    cloud: ops.cloud.name.clone(),
                })?;
            let auth_url = profile
                .auth
                .as_ref()
                .and_then(|a| a.auth_url.clone())
                .ok_or_else(|| OsError::CloudsFile {
                    path: String::new(),
                    message: format!("cloud `{}` has no auth.auth_url", ops.cloud.name),
                })?;
            let name = credential_name(&self.cluster.name, &ops.cloud.name);
            let entry_of =
                |id: &str, secret: &str| credential_entry(&profile, &auth_url, id, secret);
            let entry =
                power_credential(&ops.cloud, &name, &self.cluster.name, &entry_of, sink).await?;
            clouds.insert(ops.cloud.name.clone(), entry);
        }
        // JSON is YAML.
        Ok(json!({ "clouds": clouds }).to_string())
    }
}

/// What the power service's credential may call ([Keystone's access rules], which each
/// service's `keystonemiddleware` checks): the compute and network APIs (servers, ports,
/// security groups, quotas, console logs) and reading images — no object storage, no volumes,
/// no identity beyond its own token.
///
/// [Keystone's access rules]: https://docs.openstack.org/keystone/latest/user/application_credentials.html#access-rules
fn access_rules() -> serde_json::Value {
    let rule = |service: &str, method: &str| json!({ "service": service, "method": method, "path": "/**" });
    let mut rules = Vec::new();
    for service in ["compute", "network"] {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            rules.push(rule(service, method));
        }
    }
    rules.push(rule("image", "GET"));
    serde_json::Value::Array(rules)
}

/// The `clouds.yaml` entry of a new power credential `name`: restricted by [`access_rules`]
/// where the cloud checks them (its token, a server and a network list work with it); else —
/// a cloud whose services do not check access rules refuses every request of a credential that
/// has them — one with the project's roles only, and a note saying so.
async fn power_credential(
    cloud: &Cloud,
    name: &str,
    cluster: &str,
    entry_of: &dyn Fn(&str, &str) -> serde_json::Value,
    sink: Sink<'_>,
) -> Result<serde_json::Value> {
    let refused = match make_credential(cloud, name, cluster, Some(access_rules())).await {
        Ok((id, secret)) => {
            let entry = entry_of(&id, &secret);
            match works(cloud, &entry).await {
                Ok(()) => return Ok(entry),
                Err(e) if refuses_rules(&e) => e,
                Err(e) => return Err(e),
            }
        }
        Err(e) if refuses_rules(&e) => e,
        Err(e) => return Err(e),
    };
    sink(Event::Note(format!(
        "{}: the power service's application credential is not restricted to compute, network and image reads (a credential with access rules did not work: {}); it has the project's roles",
        cloud.name,
        hybridgrid_core::error_chain(&refused)
    )));
    let (id, secret) = make_credential(cloud, name, cluster, None).await?;
    Ok(entry_of(&id, &secret))
}

/// A refusal of the credential's rules (Keystone refuses to make one with rules: 400, 403; a
/// service refuses its token: 401, 403), not a cloud that failed: only that falls back to a
/// credential without rules.
fn refuses_rules(e: &OsError) -> bool {
    matches!(e.status(), Some(400 | 401 | 403))
}

/// Whether the credential of `entry` gets a token and lists servers, networks and images.
async fn works(cloud: &Cloud, entry: &serde_json::Value) -> Result<()> {
    let profile: openstack_sdk::config::CloudConfig = serde_json::from_value(entry.clone())
        .map_err(|e| OsError::Connect {
            cloud: cloud.name.clone(),
            message: e.to_string(),
        })?;
    let probe = cloud.with_credentials(&profile).await?;
    probe
        .get(
            "list servers",
            Req::get(crate::api::NOVA, "servers").q("limit", "1"),
        )
        .await?;
    probe
        .get(
            "list networks",
            Req::get(crate::api::NET, "networks").q("limit", "1"),
        )
        .await?;
    probe
        .get(
            "list images",
            Req::get(crate::api::GLANCE, "images").q("limit", "1"),
        )
        .await?;
    Ok(())
}

/// The master's `clouds.yaml` entry for application credential `id` of the cloud `profile` is
/// the user's entry of.
fn credential_entry(
    profile: &openstack_sdk::config::CloudConfig,
    auth_url: &str,
    id: &str,
    secret: &str,
) -> serde_json::Value {
    let mut entry = json!({
        "auth_type": "v3applicationcredential",
        "auth": {
            "auth_url": auth_url,
            "application_credential_id": id,
            "application_credential_secret": secret,
        },
    });
    if let Some(r) = &profile.region_name {
        entry["region_name"] = json!(r);
    }
    if let Some(i) = &profile.interface {
        entry["interface"] = json!(i);
    }
    if profile.verify == Some(false) {
        entry["verify"] = json!(false);
    }
    entry
}

/// A new application credential `name` of the cloud's user for its project (restricted: it
/// cannot make further credentials or trusts; with `access_rules`, it can call only those),
/// replacing one of that name; its id and secret.
async fn make_credential(
    cloud: &Cloud,
    name: &str,
    cluster: &str,
    access_rules: Option<serde_json::Value>,
) -> Result<(String, String)> {
    delete_credentials(cloud, name).await?;
    let mut credential = json!({
        "name": name,
        "description": format!("hybridgrid cluster {cluster}: the master's power service (on-demand workers)"),
        "unrestricted": false,
    });
    if let Some(rules) = access_rules {
        credential["access_rules"] = rules;
    }
    let made = cloud
        .create(
            "create application credential",
            Req::post(
                Service::Keystone,
                format!("users/{}/application_credentials", cloud.user_id),
                json!({ "application_credential": credential }),
            ),
        )
        .await
        .map_err(|e| OsError::PowerCredential {
            cloud: cloud.name.clone(),
            detail: hybridgrid_core::error_chain(&e),
        })?;
    let c = &made["application_credential"];
    let field = |f: &'static str| -> Result<String> {
        c[f].as_str()
            .map(str::to_owned)
            .ok_or_else(|| crate::api::missing(Service::Keystone, "the application credential", f))
    };
    Ok((field("id")?, field("secret")?))
}

/// Deletes the cloud user's application credentials called `name`; how many.
async fn delete_credentials(cloud: &Cloud, name: &str) -> Result<usize> {
    let path = format!("users/{}/application_credentials", cloud.user_id);
    let found = cloud
        .list(
            "list application credentials",
            Req::get(Service::Keystone, path.clone()).q("name", name),
            "application_credentials",
        )
        .await?;
    let ids: Vec<&str> = found.iter().filter_map(|c| c["id"].as_str()).collect();
    for id in &ids {
        cloud
            .delete(
                "delete application credential",
                Req::delete(Service::Keystone, format!("{path}/{id}")),
            )
            .await?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: Option<u16>) -> OsError {
        OsError::Api {
            cloud: "site-b".into(),
            what: "list servers".into(),
            status,
            message: String::new(),
        }
    }

    #[test]
    fn only_a_refusal_falls_back_to_a_credential_without_rules() {
        for refused in [400, 401, 403] {
            assert!(refuses_rules(&api(Some(refused))), "{refused}");
        }
        for failed in [Some(500), Some(503), Some(404), None] {
            assert!(!refuses_rules(&api(failed)), "{failed:?}");
        }
    }

    #[test]
    fn the_check_script_output_says_what_the_master_has() {
        let m = OnMaster::parse("cluster=abc\nbinary=\nunit=def\nclouds=yes\nactive=inactive\n");
        assert_eq!(m.cluster_sha, "abc");
        assert_eq!(m.binary_sha, "");
        assert!(m.has_clouds);
        assert!(!m.active);
    }

    #[test]
    fn the_unit_names_no_secret_and_runs_the_full_binary() {
        let u = unit("c1");
        assert!(u.contains("ExecStart=/usr/local/bin/hybridgrid power-service"));
        assert!(u.contains("/run/hybridgrid/power/c1.sock"));
        assert!(!u.contains("secret"));
    }
}
