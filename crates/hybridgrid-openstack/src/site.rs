//! One site's resources: find, create (ledger first), observe, delete. This module holds the
//! site's naming, tags, ledger recording, the generic Neutron helpers and the network, subnet and
//! router; the rest of [`SiteOps`] lives in the sibling `site_*` modules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hybridgrid_core::model::Site;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::api::{Cloud, NET, Req, need_id, strings};
use crate::error::{OsError, Result};
use crate::ledger::{Kind, Ledger, State};

/// Neutron tag on everything of every cluster.
pub const TAG: &str = "hybridgrid";

pub fn cluster_tag(cluster: &str) -> String {
    format!("hybridgrid-cluster={cluster}")
}

pub fn site_tag(site: &str) -> String {
    format!("hybridgrid-site={site}")
}

/// A site of the cluster with its cloud connection.
#[derive(Debug)]
pub(crate) struct SiteOps {
    pub cluster: String,
    pub site: Site,
    pub cloud: Arc<Cloud>,
    pub ledger: Arc<Ledger>,
    /// Where nodes download the agent, and the SHA-256 it must have.
    pub agent_url: Option<String>,
    pub agent_sha256: Option<String>,
    pub ssh_public_key: Option<String>,
    /// The power service's public SSH key, for the on-demand workers it makes (on the master).
    pub power_key: Option<String>,
    pub server_timeout: Duration,
    pub(crate) flavors: OnceCell<Vec<Value>>,
    ext_net: OnceCell<String>,
}

/// The network and subnet a site's nodes live on.
#[derive(Debug, Clone)]
pub(crate) struct NetIds {
    pub net: String,
    pub subnet: String,
}

/// A server found in the cloud.
#[derive(Debug, Clone)]
pub(crate) struct FoundServer {
    pub id: String,
    pub node: String,
    pub status: String,
    /// The server's Nova metadata (the delivery items among it).
    pub metadata: BTreeMap<String, String>,
}

impl SiteOps {
    pub fn new(
        cluster: &str,
        site: Site,
        cloud: Arc<Cloud>,
        ledger: Arc<Ledger>,
        (agent_url, agent_sha256): (Option<String>, Option<String>),
        ssh_public_key: Option<String>,
        server_timeout: Duration,
    ) -> Self {
        SiteOps {
            cluster: cluster.to_owned(),
            site,
            cloud,
            ledger,
            agent_url,
            agent_sha256,
            ssh_public_key,
            power_key: None,
            server_timeout,
            flavors: OnceCell::new(),
            ext_net: OnceCell::new(),
        }
    }

    // ---- names and tags

    pub fn net_name(&self) -> String {
        format!("{}-{}-net", self.cluster, self.site.name)
    }
    pub fn subnet_name(&self) -> String {
        format!("{}-{}-subnet", self.cluster, self.site.name)
    }
    pub fn router_name(&self) -> String {
        format!("{}-{}-router", self.cluster, self.site.name)
    }
    pub fn keypair_name(&self) -> String {
        format!("{}-key", self.cluster)
    }
    pub fn port_name(&self, node: &str) -> String {
        format!("{}-{node}-port", self.cluster)
    }
    pub fn server_name(&self, node: &str) -> String {
        format!("{}-{node}", self.cluster)
    }
    pub fn fip_name(&self, node: &str) -> String {
        format!("{}-{node}-fip", self.cluster)
    }
    pub fn tags(&self) -> Vec<String> {
        vec![
            TAG.to_owned(),
            cluster_tag(&self.cluster),
            site_tag(&self.site.name),
        ]
    }
    /// Whether a Neutron resource carries this site's tags.
    pub fn tagged(&self, v: &Value) -> bool {
        let have: Vec<&str> = strings(&v["tags"]).collect();
        self.tags().iter().all(|t| have.contains(&t.as_str()))
    }
    /// The `tags` filter selecting this site's resources of the cluster.
    pub fn tag_filter(&self) -> String {
        format!(
            "{},{}",
            cluster_tag(&self.cluster),
            site_tag(&self.site.name)
        )
    }

    /// The `id` of this site's `what` (`"network"`, `"router"`) in Neutron's answer.
    pub(crate) fn neutron_id(&self, v: &Value, what: &str) -> Result<String> {
        need_id(v, NET, &format!("the {what} of site {}", self.site.name))
    }

    pub(crate) fn site_err(&self, message: impl Into<String>) -> OsError {
        OsError::Site {
            site: self.site.name.clone(),
            message: message.into(),
        }
    }

    pub(crate) fn record(
        &self,
        kind: Kind,
        name: &str,
        id: Option<&str>,
        state: State,
    ) -> Result<()> {
        self.ledger.record(
            &self.site.name,
            &self.cloud.name,
            self.site.subnet,
            kind,
            name,
            id,
            state,
        )
    }

    // ---- generic Neutron create: ledger (intended) → POST → ledger (id) → tags

    pub(crate) async fn create_neutron(
        &self,
        kind: Kind,
        name: &str,
        collection: &str,
        singular: &str,
        body: Value,
    ) -> Result<Value> {
        self.record(kind, name, None, State::Intended)?;
        let v = self
            .cloud
            .create(
                &format!("create {singular} {name}"),
                Req::post(NET, collection, json!({ singular: body })),
            )
            .await?;
        let obj = v[singular].clone();
        let id = need_id(&obj, NET, &format!("{singular} {name}"))?;
        self.record(kind, name, Some(&id), State::Created)?;
        self.ensure_tags(collection, &obj).await?;
        Ok(obj)
    }

    /// Puts the cluster's tags on a Neutron resource unless it has them already.
    pub(crate) async fn ensure_tags(&self, collection: &str, obj: &Value) -> Result<()> {
        let have: BTreeSet<String> = strings(&obj["tags"]).map(str::to_owned).collect();
        let want = self.tags();
        if want.iter().all(|t| have.contains(t)) {
            return Ok(());
        }
        let mut all: BTreeSet<String> = have;
        all.extend(want);
        let id = need_id(obj, NET, &format!("an entry of {collection}"))?;
        self.cloud
            .call(
                &format!("tag {collection}/{id}"),
                &Req::put(
                    NET,
                    format!("{collection}/{id}/tags"),
                    json!({ "tags": all }),
                ),
                crate::api::Retry::Idempotent,
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn find_one(
        &self,
        collection: &'static str,
        req: Req,
    ) -> Result<Option<Value>> {
        let l = self
            .cloud
            .list(&format!("list {collection}"), req, collection)
            .await?;
        Ok(l.into_iter().next())
    }

    // ---- network

    pub async fn find_network(&self) -> Result<Option<Value>> {
        match &self.site.network {
            Some(n) => {
                if let Some(v) = self
                    .cloud
                    .get_opt("get network", Req::get(NET, format!("networks/{n}")))
                    .await?
                {
                    return Ok(Some(v["network"].clone()));
                }
                let l = self
                    .cloud
                    .list(
                        "list networks",
                        Req::get(NET, "networks").q("name", n.as_str()),
                        "networks",
                    )
                    .await?;
                if l.len() > 1 {
                    return Err(self.site_err(format!("{} networks are named `{n}`", l.len())));
                }
                Ok(l.into_iter().next())
            }
            None => {
                self.find_one(
                    "networks",
                    Req::get(NET, "networks").q("name", self.net_name()),
                )
                .await
            }
        }
    }

    pub async fn find_subnet(&self, net_id: &str) -> Result<Option<Value>> {
        self.find_one(
            "subnets",
            Req::get(NET, "subnets")
                .q("network_id", net_id)
                .q("cidr", self.site.subnet.to_string()),
        )
        .await
    }

    pub async fn find_router(&self) -> Result<Option<Value>> {
        self.find_one(
            "routers",
            Req::get(NET, "routers").q("name", self.router_name()),
        )
        .await
    }

    async fn router_has_interface(&self, router_id: &str, net_id: &str) -> Result<bool> {
        let l = self
            .device_ports("list router ports", router_id, net_id)
            .await?;
        Ok(!l.is_empty())
    }

    /// The ports of a device (a server, a router) on a network.
    pub(crate) async fn device_ports(
        &self,
        what: &str,
        device_id: &str,
        net_id: &str,
    ) -> Result<Vec<Value>> {
        self.cloud
            .list(
                what,
                Req::get(NET, "ports")
                    .q("device_id", device_id)
                    .q("network_id", net_id),
                "ports",
            )
            .await
    }

    /// The network and subnet, if both exist.
    pub async fn net_ids(&self) -> Result<Option<NetIds>> {
        let Some(net) = self.find_network().await? else {
            return Ok(None);
        };
        let net_id = self.neutron_id(&net, "network")?;
        let Some(sub) = self.find_subnet(&net_id).await? else {
            return Ok(None);
        };
        Ok(Some(NetIds {
            net: net_id,
            subnet: self.neutron_id(&sub, "subnet")?,
        }))
    }

    pub async fn require_net_ids(&self) -> Result<NetIds> {
        self.net_ids().await?.ok_or_else(|| {
            self.site_err(format!(
                "no network with a subnet {} (yet)",
                self.site.subnet
            ))
        })
    }

    /// The network and subnet if both exist, and whether the site's network is complete:
    /// network, subnet and (when hybridgrid makes the network) a router with an external gateway
    /// and an interface on the subnet.
    /// Resources whose create went through but whose tagging did not (an interrupted run) count
    /// as missing for completeness, so that the next round's ensure step finds and tags them.
    pub async fn network_state(&self) -> Result<(Option<NetIds>, bool)> {
        let own = self.site.network.is_none();
        let router = async {
            if own {
                self.find_router().await
            } else {
                Ok(None)
            }
        };
        let (net, router) = tokio::try_join!(self.find_network(), router)?;
        let Some(net) = net else {
            return Ok((None, false));
        };
        let net_id = self.neutron_id(&net, "network")?;
        let Some(sub) = self.find_subnet(&net_id).await? else {
            return Ok((None, false));
        };
        let ids = NetIds {
            net: net_id,
            subnet: self.neutron_id(&sub, "subnet")?,
        };
        if !own {
            return Ok((Some(ids), true));
        }
        let Some(router) = router else {
            return Ok((Some(ids), false));
        };
        if !self.tagged(&net) || !self.tagged(&sub) || !self.tagged(&router) {
            return Ok((Some(ids), false));
        }
        if router["external_gateway_info"]["network_id"].is_null() {
            return Ok((Some(ids), false));
        }
        let ready = self
            .router_has_interface(&self.neutron_id(&router, "router")?, &ids.net)
            .await?;
        Ok((Some(ids), ready))
    }

    /// Network and subnet (the router comes separately, in parallel with the nodes).
    pub async fn ensure_net_subnet(&self) -> Result<NetIds> {
        if let Some(n) = &self.site.network {
            let net = self
                .find_network()
                .await?
                .ok_or_else(|| self.site_err(format!("network `{n}` not found")))?;
            let net_id = self.neutron_id(&net, "network")?;
            let sub = self.find_subnet(&net_id).await?.ok_or_else(|| {
                self.site_err(format!(
                    "network `{n}` has no subnet {} (the file's `subnet` must be the network's)",
                    self.site.subnet
                ))
            })?;
            return Ok(NetIds {
                net: net_id,
                subnet: self.neutron_id(&sub, "subnet")?,
            });
        }
        let net = match self.find_network().await? {
            Some(n) => {
                self.ensure_tags("networks", &n).await?;
                n
            }
            None => {
                let name = self.net_name();
                self.create_neutron(
                    Kind::Network,
                    &name,
                    "networks",
                    "network",
                    json!({ "name": name, "description": self.description() }),
                )
                .await?
            }
        };
        let net_id = self.neutron_id(&net, "network")?;
        let sub = match self.find_subnet(&net_id).await? {
            Some(sub) => {
                self.ensure_tags("subnets", &sub).await?;
                sub
            }
            None => {
                let name = self.subnet_name();
                let base = u32::from(self.site.subnet.network());
                let ip = |n: u32| Ipv4Addr::from(base + n).to_string();
                self.create_neutron(
                    Kind::Subnet,
                    &name,
                    "subnets",
                    "subnet",
                    json!({
                        "name": name,
                        "network_id": net_id,
                        "ip_version": 4,
                        "cidr": self.site.subnet.to_string(),
                        "gateway_ip": ip(1),
                        // .2–.4 for the cloud (DHCP, metadata); hybridgrid's ports have fixed IPs.
                        "allocation_pools": [{ "start": ip(2), "end": ip(4) }],
                        "enable_dhcp": true,
                        "description": self.description(),
                    }),
                )
                .await?
            }
        };
        Ok(NetIds {
            net: net_id,
            subnet: self.neutron_id(&sub, "subnet")?,
        })
    }

    pub(crate) fn description(&self) -> String {
        format!(
            "hybridgrid cluster {} site {}",
            self.cluster, self.site.name
        )
    }

    /// The external network: the file's `external_network`, else the cloud's only one.
    pub async fn external_network(&self) -> Result<String> {
        self.ext_net
            .get_or_try_init(|| async {
                let l = self
                    .cloud
                    .list(
                        "list external networks",
                        Req::get(NET, "networks").q("router:external", "true"),
                        "networks",
                    )
                    .await?;
                let id = |n: &Value| need_id(n, NET, "an external network");
                match &self.site.external_network {
                    Some(want) => l
                        .iter()
                        .find(|n| {
                            n["name"].as_str() == Some(want) || n["id"].as_str() == Some(want)
                        })
                        .ok_or_else(|| {
                            self.site_err(format!("external network `{want}` not found"))
                        })
                        .and_then(id),
                    None if l.len() == 1 => id(&l[0]),
                    None => Err(self.site_err(format!(
                        "{} external networks: name one with `external_network`",
                        l.len()
                    ))),
                }
            })
            .await
            .cloned()
    }

    /// Router with an external gateway (hybridgrid's own network only); its id.
    pub async fn ensure_router_only(&self) -> Result<Option<String>> {
        if self.site.network.is_some() {
            return Ok(None);
        }
        let router = match self.find_router().await? {
            Some(r) => {
                self.ensure_tags("routers", &r).await?;
                r
            }
            None => {
                let ext = self.external_network().await?;
                let name = self.router_name();
                self.create_neutron(
                    Kind::Router,
                    &name,
                    "routers",
                    "router",
                    json!({
                        "name": name,
                        "description": self.description(),
                        "external_gateway_info": { "network_id": ext },
                    }),
                )
                .await?
            }
        };
        Ok(Some(self.neutron_id(&router, "router")?))
    }

    /// The router's interface on the subnet.
    pub async fn ensure_router_interface(&self, router_id: &str, ids: &NetIds) -> Result<()> {
        if !self.router_has_interface(router_id, &ids.net).await? {
            let name = self.router_name();
            self.record(
                Kind::RouterInterface,
                &name,
                Some(&ids.subnet),
                State::Intended,
            )?;
            // Safe to retry after a lookup: a 5xx may still have attached the interface.
            let mut attempt = 0;
            loop {
                let r = self
                    .cloud
                    .create(
                        "add router interface",
                        Req::put(
                            NET,
                            format!("routers/{router_id}/add_router_interface"),
                            json!({ "subnet_id": ids.subnet }),
                        ),
                    )
                    .await;
                match r {
                    Ok(_) => break,
                    Err(e)
                        if attempt < 4
                            && matches!(e, OsError::Api { .. })
                            && e.status().is_none_or(|s| s == 409 || s >= 500) =>
                    {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                        if self.router_has_interface(router_id, &ids.net).await? {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            self.record(
                Kind::RouterInterface,
                &name,
                Some(&ids.subnet),
                State::Created,
            )?;
        }
        Ok(())
    }
}

/// `10.1.0.0/24` or a bare address (a /32).
pub(crate) fn parse_net(text: &str) -> Option<Ipv4Net> {
    text.parse::<Ipv4Net>()
        .ok()
        .or_else(|| text.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

pub(crate) fn find_by_name_or_id<'a>(list: &'a [Value], want: &str) -> Option<&'a Value> {
    list.iter()
        .find(|v| v["id"].as_str() == Some(want))
        .or_else(|| list.iter().find(|v| v["name"].as_str() == Some(want)))
}
