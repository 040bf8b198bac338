//! A site's nodes on Nova: the keypair, servers (find, create, wait, delete), flavors and
//! images, metadata delivery and the relay's console key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hybridgrid_core::node_meta;
use hybridgrid_core::plan::{NodePlan, Plan};
use serde_json::{Value, json};

use crate::api::{Cloud, NOVA, Req, need_id, need_str};
use crate::error::{OsError, Result};
use crate::ledger::{Kind, State};
use crate::site::{FoundServer, SiteOps, find_by_name_or_id};
use crate::userdata;

impl SiteOps {
    pub async fn ensure_keypair(&self) -> Result<Option<String>> {
        let Some(key) = &self.ssh_public_key else {
            return Ok(None);
        };
        let name = self.keypair_name();
        if self
            .cloud
            .get_opt("get keypair", Req::get(NOVA, format!("os-keypairs/{name}")))
            .await?
            .is_none()
        {
            self.record(Kind::Keypair, &name, Some(&name), State::Intended)?;
            match self
                .cloud
                .create(
                    "create keypair",
                    Req::post(
                        NOVA,
                        "os-keypairs",
                        json!({ "keypair": { "name": name, "public_key": key.trim() } }),
                    ),
                )
                .await
            {
                Ok(_) => {}
                // Created meanwhile by the other site of the same cloud.
                Err(e) if e.status() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        self.record(Kind::Keypair, &name, Some(&name), State::Created)?;
        Ok(Some(name))
    }

    /// The cluster's servers in this site's project, by node (ERROR/DELETED ones left out
    /// unless `all`).
    pub async fn servers(&self, all: bool) -> Result<Vec<FoundServer>> {
        let l = self
            .cloud
            .list(
                "list servers",
                Req::get(NOVA, "servers/detail").q("name", format!("^{}-", self.cluster)),
                "servers",
            )
            .await?;
        l.iter()
            .filter(|v| {
                let md = &v["metadata"];
                md["hybridgrid_cluster"].as_str() == Some(self.cluster.as_str())
                    && md["hybridgrid_site"].as_str() == Some(self.site.name.as_str())
            })
            .map(found_server)
            .filter(|r| {
                all || !r.as_ref().is_ok_and(|s| {
                    matches!(s.status.as_str(), "ERROR" | "DELETED" | "SOFT_DELETED")
                })
            })
            .collect()
    }

    /// The cloud's flavors, listed once.
    async fn flavor_list(&self) -> Result<&[Value]> {
        self.flavors
            .get_or_try_init(|| async {
                self.cloud
                    .list("list flavors", Req::get(NOVA, "flavors/detail"), "flavors")
                    .await
            })
            .await
            .map(Vec::as_slice)
    }

    async fn flavor_id(&self, want: &str) -> Result<String> {
        let flavor = find_by_name_or_id(self.flavor_list().await?, want)
            .ok_or_else(|| self.site_err(format!("flavor `{want}` not found")))?;
        need_id(flavor, NOVA, &format!("flavor {want}"))
    }

    pub async fn flavors(&self) -> Result<Vec<Value>> {
        Ok(self.flavor_list().await?.to_vec())
    }

    pub async fn image_id(&self, want: &str) -> Result<String> {
        need_id(
            &self.image(want).await?,
            crate::api::GLANCE,
            &format!("image {want}"),
        )
    }

    /// Glance's record of the image `want` (an id or a name), with its properties.
    pub async fn image(&self, want: &str) -> Result<Value> {
        if let Some(v) = self
            .cloud
            .get_opt(
                "get image",
                Req::get(crate::api::GLANCE, format!("images/{want}")),
            )
            .await
            .ok()
            .flatten()
        {
            return Ok(v);
        }
        let l = self
            .cloud
            .list(
                "list images",
                Req::get(crate::api::GLANCE, "images").q("name", want),
                "images",
            )
            .await?;
        l.into_iter()
            .next()
            .ok_or_else(|| self.site_err(format!("image `{want}` not found")))
    }

    /// The cluster's server of the node, if there is one that is not in ERROR (one in ERROR is
    /// deleted). Looked up by metadata before every create: a retry or a resumed `up` never
    /// makes a second server.
    pub async fn find_server(&self, node: &str) -> Result<Option<String>> {
        for srv in self.servers(true).await? {
            if srv.node != node {
                continue;
            }
            if srv.status == "ERROR" {
                self.delete_server(&srv.id).await?;
                continue;
            }
            self.record(
                Kind::Server,
                &self.server_name(node),
                Some(&srv.id),
                State::Created,
            )?;
            return Ok(Some(srv.id));
        }
        Ok(None)
    }

    /// The flavor and image ids of the node's server.
    pub async fn flavor_and_image(&self, node: &NodePlan) -> Result<(String, String)> {
        let flavor = node
            .flavor
            .as_deref()
            .ok_or_else(|| self.site_err(format!("node {} has no flavor", node.name)))?;
        let image = node
            .image
            .as_deref()
            .ok_or_else(|| self.site_err(format!("node {} has no image", node.name)))?;
        tokio::try_join!(self.flavor_id(flavor), self.image_id(image))
    }

    /// Creates the node's server on its port (after [`Self::find_server`] found none), with the
    /// keypair and in the server group (a relay pair's) given: the build to wait for.
    pub async fn create_server(
        &self,
        plan: &Plan,
        node: &NodePlan,
        port_id: &str,
        (keypair, server_group): (Option<&str>, Option<&str>),
        (flavor_id, image_id): (String, String),
    ) -> Result<ServerBuild> {
        let name = self.server_name(&node.name);
        let ud = userdata::user_data_for(
            plan,
            node,
            (self.agent_url.as_deref(), self.agent_sha256.as_deref()),
            self.power_key.as_deref(),
        );
        let mut server = json!({
            "name": name,
            "flavorRef": flavor_id,
            "imageRef": image_id,
            "networks": [{ "port": port_id }],
            "metadata": {
                "hybridgrid_cluster": self.cluster,
                "hybridgrid_site": self.site.name,
                "hybridgrid_node": node.name,
                "hybridgrid_role": node.role.as_str(),
            },
            "user_data": base64::engine::general_purpose::STANDARD.encode(ud.as_bytes()),
        });
        if let Some(k) = keypair {
            server["key_name"] = json!(k);
        }
        let config = plan.node_config(node);
        self.ledger.update(|d| {
            d.delivered.insert(node.name.clone(), config);
            // A new server makes a new WireGuard key: the old one is read again from its console.
            d.public_keys.remove(&node.name);
        })?;
        let mut build = ServerBuild {
            cloud: self.cloud.clone(),
            ledger: self.ledger.clone(),
            site: (
                self.site.name.clone(),
                self.cloud.name.clone(),
                self.site.subnet,
            ),
            node: node.name.clone(),
            name,
            id: String::new(),
            request: match server_group {
                Some(group) => {
                    json!({ "server": server, "os:scheduler_hints": { "group": group } })
                }
                None => json!({ "server": server }),
            },
            timeout: self.server_timeout,
        };
        build.create().await?;
        Ok(build)
    }

    /// Waits until the server is ACTIVE; an ERROR status fails with Nova's fault message.
    pub async fn wait_active(&self, id: &str, name: &str) -> Result<()> {
        wait_active(
            self.cloud.clone(),
            id.to_owned(),
            name.to_owned(),
            self.server_timeout,
        )
        .await
    }

    /// Deletes a server and waits until it is gone; `false` when it did not exist.
    pub async fn delete_server(&self, id: &str) -> Result<bool> {
        delete_server(&self.cloud, id, self.server_timeout).await
    }

    /// Replaces the delivery items of the server's metadata ([`node_meta`]) with `items`, keeping
    /// every other item. The server's new metadata; `None` when the items were as wanted
    /// already.
    pub async fn set_delivery_metadata(
        &self,
        server: &FoundServer,
        items: &BTreeMap<String, String>,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let current: BTreeMap<&String, &String> = server
            .metadata
            .iter()
            .filter(|(k, _)| node_meta::is_delivery_key(k))
            .collect();
        let wanted: BTreeMap<&String, &String> = items.iter().collect();
        if current == wanted {
            return Ok(None);
        }
        let mut all: BTreeMap<String, String> = server
            .metadata
            .iter()
            .filter(|(k, _)| !node_meta::is_delivery_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.extend(items.clone());
        self.cloud
            .call(
                &format!("set metadata of {}", self.server_name(&server.node)),
                &Req::put(
                    NOVA,
                    format!("servers/{}/metadata", server.id),
                    json!({ "metadata": all }),
                ),
                crate::api::Retry::Idempotent,
            )
            .await?;
        Ok(Some(all))
    }

    /// The key a relay printed to its console, if any.
    pub async fn console_public_key(&self, server_id: &str) -> Option<String> {
        userdata::public_key_from_console(&self.console_output(server_id).await?)
    }

    /// The last 200 lines of the server's console log (Nova's console-output API).
    pub async fn console_output(&self, server_id: &str) -> Option<String> {
        let v = self
            .cloud
            .call(
                "get console output",
                &Req::post(
                    NOVA,
                    format!("servers/{server_id}/action"),
                    json!({ "os-getConsoleOutput": { "length": 200 } }),
                ),
                crate::api::Retry::Idempotent,
            )
            .await
            .ok()?;
        v["output"].as_str().map(str::to_owned)
    }
}

/// A server of the cluster in Nova's answer.
fn found_server(v: &Value) -> Result<FoundServer> {
    let id = need_id(v, NOVA, "a server of the cluster")?;
    let what = format!("server {id}");
    Ok(FoundServer {
        node: need_str(
            &v["metadata"],
            NOVA,
            &format!("the metadata of {what}"),
            "hybridgrid_node",
        )?,
        status: need_str(v, NOVA, &what, "status")?,
        metadata: v["metadata"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|x| (k.clone(), x.to_owned())))
            .collect(),
        id,
    })
}

/// Deletes a server and waits until it is gone; `false` when it did not exist.
async fn delete_server(cloud: &Cloud, id: &str, timeout: Duration) -> Result<bool> {
    let existed = cloud
        .delete("delete server", Req::delete(NOVA, format!("servers/{id}")))
        .await?;
    let t0 = Instant::now();
    while cloud
        .get_opt("get server", Req::get(NOVA, format!("servers/{id}")))
        .await?
        .is_some()
    {
        if t0.elapsed() > timeout {
            return Err(OsError::ServerFailed {
                name: id.to_owned(),
                message: "still there after delete".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(existed)
}

/// Whether Nova gave up a build because Neutron did not wire its port in time (the agent that
/// plugs ports was busy): transient, and Nova does not reschedule such a build.
fn network_allocation_failed(message: &str) -> bool {
    message.contains("Failed to allocate the network")
}

/// A server being built: what [`ServerBuild::wait`] needs to wait for it and, once, to build it
/// again. Owns everything so that it can run as a task while `up` goes on.
pub(crate) struct ServerBuild {
    cloud: Arc<Cloud>,
    ledger: Arc<crate::ledger::Ledger>,
    /// The site's name, cloud and subnet, as the ledger records them.
    site: (String, String, ipnet::Ipv4Net),
    pub node: String,
    name: String,
    pub id: String,
    /// The create call's body (the same port, user data and metadata for a second build).
    request: Value,
    timeout: Duration,
}

impl ServerBuild {
    fn record(&self, id: Option<&str>, state: State) -> Result<()> {
        let (site, cloud, subnet) = &self.site;
        self.ledger
            .record(site, cloud, *subnet, Kind::Server, &self.name, id, state)
    }

    async fn create(&mut self) -> Result<()> {
        self.record(None, State::Intended)?;
        let v = self
            .cloud
            .create(
                &format!("create server {}", self.name),
                Req::post(NOVA, "servers", self.request.clone()),
            )
            .await?;
        self.id = need_id(&v["server"], NOVA, &format!("server {}", self.name))?;
        self.record(Some(&self.id), State::Created)
    }

    /// Waits until the server is ACTIVE: seconds from the create call, and a note when the first
    /// build failed for want of its network and the server was built once more.
    pub async fn wait(mut self, since: Instant) -> Result<(f64, Option<String>)> {
        match wait_active(
            self.cloud.clone(),
            self.id.clone(),
            self.node.clone(),
            self.timeout,
        )
        .await
        {
            Err(OsError::ServerFailed { message, .. }) if network_allocation_failed(&message) => {
                delete_server(&self.cloud, &self.id, self.timeout).await?;
                self.create().await?;
                wait_active(
                    self.cloud.clone(),
                    self.id.clone(),
                    self.node.clone(),
                    self.timeout,
                )
                .await?;
                Ok((
                    since.elapsed().as_secs_f64(),
                    Some(format!(
                        "{}: the first build failed ({message}): built once more",
                        self.node
                    )),
                ))
            }
            r => r.map(|()| (since.elapsed().as_secs_f64(), None)),
        }
    }
}

/// Waits until the server is ACTIVE; an ERROR status fails with Nova's fault message. Owns its
/// arguments so that it can run as a task while `up` goes on.
pub(crate) async fn wait_active(
    cloud: Arc<Cloud>,
    id: String,
    name: String,
    timeout: Duration,
) -> Result<()> {
    let (id, name) = (id.as_str(), name.as_str());
    {
        let t0 = Instant::now();
        loop {
            let v = cloud
                .get("get server", Req::get(NOVA, format!("servers/{id}")))
                .await?;
            match need_str(&v["server"], NOVA, &format!("server {name}"), "status")?.as_str() {
                "ACTIVE" => return Ok(()),
                "ERROR" => {
                    return Err(OsError::ServerFailed {
                        name: name.to_owned(),
                        message: v["server"]["fault"]["message"]
                            .as_str()
                            .unwrap_or("status ERROR")
                            .to_owned(),
                    });
                }
                _ => {}
            }
            if t0.elapsed() > timeout {
                return Err(OsError::ServerFailed {
                    name: name.to_owned(),
                    message: format!("not ACTIVE after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_network_allocation_builds_again() {
        assert!(network_allocation_failed(
            "Build of instance 00f2 aborted: Failed to allocate the network(s), not rescheduling."
        ));
        assert!(!network_allocation_failed("No valid host was found."));
    }
}
