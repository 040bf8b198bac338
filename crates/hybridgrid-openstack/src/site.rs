//! One site's resources: find, create (ledger first), observe, delete.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hybridgrid_core::diff::{ObservedNode, ObservedSite};
use hybridgrid_core::model::Site;
use hybridgrid_core::node_meta;
use hybridgrid_core::plan::{NodePlan, Plan, Protocol, Remote, SgRule};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::api::{Cloud, NET, NOVA, Req, s};
use crate::error::{OsError, Result};
use crate::ledger::{Kind, Ledger, State};
use crate::userdata;

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
    pub agent_url: Option<String>,
    pub ssh_public_key: Option<String>,
    pub server_timeout: Duration,
    flavors: OnceCell<Vec<Value>>,
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
        agent_url: Option<String>,
        ssh_public_key: Option<String>,
        server_timeout: Duration,
    ) -> Self {
        SiteOps {
            cluster: cluster.to_owned(),
            site,
            cloud,
            ledger,
            agent_url,
            ssh_public_key,
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
        let have: Vec<String> = v["tags"].as_array().into_iter().flatten().map(s).collect();
        self.tags().iter().all(|t| have.contains(t))
    }
    /// The `tags` filter selecting this site's resources of the cluster.
    pub fn tag_filter(&self) -> String {
        format!(
            "{},{}",
            cluster_tag(&self.cluster),
            site_tag(&self.site.name)
        )
    }

    fn site_err(&self, message: impl Into<String>) -> OsError {
        OsError::Site {
            site: self.site.name.clone(),
            message: message.into(),
        }
    }

    fn record(&self, kind: Kind, name: &str, id: Option<&str>, state: State) -> Result<()> {
        self.ledger
            .record(&self.site.name, &self.cloud.name, kind, name, id, state)
    }

    // ---- generic Neutron create: ledger (intended) → POST → ledger (id) → tags

    async fn create_neutron(
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
        let id = s(&obj["id"]);
        self.record(kind, name, Some(&id), State::Created)?;
        self.ensure_tags(collection, &obj).await?;
        Ok(obj)
    }

    /// Puts the cluster's tags on a Neutron resource unless it has them already.
    async fn ensure_tags(&self, collection: &str, obj: &Value) -> Result<()> {
        let have: BTreeSet<String> = obj["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let want = self.tags();
        if want.iter().all(|t| have.contains(t)) {
            return Ok(());
        }
        let mut all: BTreeSet<String> = have;
        all.extend(want);
        let id = s(&obj["id"]);
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

    async fn find_one(&self, collection: &str, req: Req) -> Result<Option<Value>> {
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
            .cloud
            .list(
                "list router ports",
                Req::get(NET, "ports")
                    .q("device_id", router_id)
                    .q("network_id", net_id),
                "ports",
            )
            .await?;
        Ok(!l.is_empty())
    }

    /// The network and subnet, if both exist.
    pub async fn net_ids(&self) -> Result<Option<NetIds>> {
        let Some(net) = self.find_network().await? else {
            return Ok(None);
        };
        let net_id = s(&net["id"]);
        Ok(self.find_subnet(&net_id).await?.map(|sub| NetIds {
            net: net_id,
            subnet: s(&sub["id"]),
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
        let Some(sub) = self.find_subnet(&s(&net["id"])).await? else {
            return Ok((None, false));
        };
        let ids = NetIds {
            net: s(&net["id"]),
            subnet: s(&sub["id"]),
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
            .router_has_interface(&s(&router["id"]), &ids.net)
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
            let sub = self.find_subnet(&s(&net["id"])).await?.ok_or_else(|| {
                self.site_err(format!(
                    "network `{n}` has no subnet {} (the file's `subnet` must be the network's)",
                    self.site.subnet
                ))
            })?;
            return Ok(NetIds {
                net: s(&net["id"]),
                subnet: s(&sub["id"]),
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
        let net_id = s(&net["id"]);
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
            subnet: s(&sub["id"]),
        })
    }

    fn description(&self) -> String {
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
                match &self.site.external_network {
                    Some(want) => l
                        .iter()
                        .find(|n| s(&n["name"]) == *want || s(&n["id"]) == *want)
                        .map(|n| s(&n["id"]))
                        .ok_or_else(|| {
                            self.site_err(format!("external network `{want}` not found"))
                        }),
                    None if l.len() == 1 => Ok(s(&l[0]["id"])),
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
        Ok(Some(s(&router["id"])))
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

    // ---- security groups

    /// This site's groups of the cluster, by name (the plan's names).
    pub async fn security_groups(&self, names: &[String]) -> Result<BTreeMap<String, Value>> {
        let l = self
            .cloud
            .list(
                "list security groups",
                Req::get(NET, "security-groups").q("project_id", self.cloud.project_id.as_str()),
                "security_groups",
            )
            .await?;
        Ok(l.into_iter()
            .filter(|g| names.contains(&s(&g["name"])))
            .map(|g| (s(&g["name"]), g))
            .collect())
    }

    pub async fn ensure_security_group(&self, name: &str) -> Result<String> {
        if let Some(g) = self.security_groups(&[name.to_owned()]).await?.remove(name) {
            self.ensure_tags("security-groups", &g).await?;
            return Ok(s(&g["id"]));
        }
        let g = self
            .create_neutron(
                Kind::SecurityGroup,
                name,
                "security-groups",
                "security_group",
                json!({ "name": name, "description": self.description() }),
            )
            .await?;
        Ok(s(&g["id"]))
    }

    /// Creates ingress rules in one bulk request; if Neutron refuses it with 409 (one of them
    /// exists already), one by one, a 409 then counting as done.
    pub async fn add_rules(&self, group_id: &str, rules: &[&SgRule]) -> Result<()> {
        let bodies: Vec<Value> = rules
            .iter()
            .filter_map(|r| rule_body(group_id, r))
            .collect();
        if bodies.is_empty() {
            return Ok(());
        }
        if bodies.len() > 1 {
            match self
                .cloud
                .create(
                    "create security group rules",
                    Req::post(
                        NET,
                        "security-group-rules",
                        json!({ "security_group_rules": bodies }),
                    ),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        for body in bodies {
            match self
                .cloud
                .create(
                    "create security group rule",
                    Req::post(
                        NET,
                        "security-group-rules",
                        json!({ "security_group_rule": body }),
                    ),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.status() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn remove_rule(&self, group: &Value, rule: &SgRule) -> Result<()> {
        for r in group["security_group_rules"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if rule_of(r).is_some_and(|x| x.key() == rule.key()) {
                self.cloud
                    .delete(
                        "delete security group rule",
                        Req::delete(NET, format!("security-group-rules/{}", s(&r["id"]))),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    // ---- nodes

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

    pub async fn find_port(&self, node: &str, net_id: &str) -> Result<Option<Value>> {
        self.find_one(
            "ports",
            Req::get(NET, "ports")
                .q("name", self.port_name(node))
                .q("network_id", net_id),
        )
        .await
    }

    /// The node's port: by server and network once the server exists, else by name.
    pub async fn node_port(
        &self,
        node: &str,
        server_id: Option<&str>,
        net_id: &str,
    ) -> Result<Option<Value>> {
        if let Some(sid) = server_id {
            let l = self
                .cloud
                .list(
                    "list server ports",
                    Req::get(NET, "ports")
                        .q("device_id", sid)
                        .q("network_id", net_id),
                    "ports",
                )
                .await?;
            if let Some(p) = l.into_iter().next() {
                return Ok(Some(p));
            }
        }
        self.find_port(node, net_id).await
    }

    /// The node's port: the one found by name, else a new one with `pairs` as its
    /// allowed-address pairs. The port id, and whether it was created now.
    pub async fn ensure_port(
        &self,
        node: &NodePlan,
        ids: &NetIds,
        group_ids: &[String],
        pairs: &[Ipv4Net],
    ) -> Result<(String, bool)> {
        if let Some(p) = self.find_port(&node.name, &ids.net).await? {
            self.ensure_tags("ports", &p).await?;
            return Ok((s(&p["id"]), false));
        }
        let name = self.port_name(&node.name);
        let pairs: Vec<Value> = pairs
            .iter()
            .map(|p| json!({ "ip_address": p.to_string() }))
            .collect();
        let p = self
            .create_neutron(
                Kind::Port,
                &name,
                "ports",
                "port",
                json!({
                    "name": name,
                    "network_id": ids.net,
                    "fixed_ips": [{ "subnet_id": ids.subnet, "ip_address": node.lan_ip.to_string() }],
                    "security_groups": group_ids,
                    "allowed_address_pairs": pairs,
                    "description": format!("hybridgrid node {}", node.name),
                }),
            )
            .await?;
        Ok((s(&p["id"]), true))
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
        Ok(l.iter()
            .filter(|v| {
                let md = &v["metadata"];
                s(&md["hybridgrid_cluster"]) == self.cluster
                    && s(&md["hybridgrid_site"]) == self.site.name
            })
            .filter(|v| {
                all || !matches!(
                    s(&v["status"]).as_str(),
                    "ERROR" | "DELETED" | "SOFT_DELETED"
                )
            })
            .map(|v| FoundServer {
                id: s(&v["id"]),
                node: s(&v["metadata"]["hybridgrid_node"]),
                status: s(&v["status"]),
                metadata: v["metadata"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| v.as_str().map(|x| (k.clone(), x.to_owned())))
                    .collect(),
            })
            .collect())
    }

    async fn flavor_id(&self, want: &str) -> Result<String> {
        let flavors = self
            .flavors
            .get_or_try_init(|| async {
                self.cloud
                    .list("list flavors", Req::get(NOVA, "flavors/detail"), "flavors")
                    .await
            })
            .await?;
        find_by_name_or_id(flavors, want)
            .map(|f| s(&f["id"]))
            .ok_or_else(|| self.site_err(format!("flavor `{want}` not found")))
    }

    pub async fn flavors(&self) -> Result<Vec<Value>> {
        self.flavor_id("").await.ok();
        Ok(self.flavors.get().cloned().unwrap_or_default())
    }

    pub async fn image_id(&self, want: &str) -> Result<String> {
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
            return Ok(s(&v["id"]));
        }
        let l = self
            .cloud
            .list(
                "list images",
                Req::get(crate::api::GLANCE, "images").q("name", want),
                "images",
            )
            .await?;
        l.first()
            .map(|i| s(&i["id"]))
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

    /// Creates the node's server on its port (after [`Self::find_server`] found none); its id.
    pub async fn create_server(
        &self,
        plan: &Plan,
        node: &NodePlan,
        port_id: &str,
        keypair: Option<&str>,
        (flavor_id, image_id): (String, String),
    ) -> Result<String> {
        let name = self.server_name(&node.name);
        let ud = userdata::user_data_with(plan, node, self.agent_url.as_deref());
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
        })?;
        self.record(Kind::Server, &name, None, State::Intended)?;
        let v = self
            .cloud
            .create(
                &format!("create server {name}"),
                Req::post(NOVA, "servers", json!({ "server": server })),
            )
            .await?;
        let id = s(&v["server"]["id"]);
        self.record(Kind::Server, &name, Some(&id), State::Created)?;
        Ok(id)
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
            match s(&v["server"]["status"]).as_str() {
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

impl SiteOps {
    /// Deletes a server and waits until it is gone; `false` when it did not exist.
    pub async fn delete_server(&self, id: &str) -> Result<bool> {
        let existed = self
            .cloud
            .delete("delete server", Req::delete(NOVA, format!("servers/{id}")))
            .await?;
        let t0 = Instant::now();
        while self
            .cloud
            .get_opt("get server", Req::get(NOVA, format!("servers/{id}")))
            .await?
            .is_some()
        {
            if t0.elapsed() > self.server_timeout {
                return Err(OsError::ServerFailed {
                    name: id.to_owned(),
                    message: "still there after delete".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(existed)
    }

    /// The project's floating IPs named (by description) for this node.
    pub async fn fips_named(&self, node: &str) -> Result<Vec<Value>> {
        let name = self.fip_name(node);
        let l = self
            .cloud
            .list(
                "list floating IPs",
                Req::get(NET, "floatingips").q("project_id", self.cloud.project_id.as_str()),
                "floatingips",
            )
            .await?;
        Ok(l.into_iter()
            .filter(|f| s(&f["description"]) == name)
            .collect())
    }

    fn fip_address(&self, node: &str, fip: &Value) -> Result<Ipv4Addr> {
        s(&fip["floating_ip_address"])
            .parse()
            .map_err(|_| self.site_err(format!("floating IP of {node} has no address")))
    }

    /// The relay's floating IP, allocated unattached (tagged, ledgered) unless it has one: its
    /// address is known before the server exists, for every peer's user data. Returns the
    /// address and whether it is still unattached.
    pub async fn allocate_floating_ip(&self, node: &str) -> Result<(Ipv4Addr, bool)> {
        let fip = match self.fips_named(node).await?.into_iter().next() {
            Some(f) => {
                self.ensure_tags("floatingips", &f).await?;
                f
            }
            None => {
                let ext = self.external_network().await?;
                let name = self.fip_name(node);
                self.create_neutron(
                    Kind::FloatingIp,
                    &name,
                    "floatingips",
                    "floatingip",
                    json!({ "floating_network_id": ext, "description": name }),
                )
                .await?
            }
        };
        Ok((self.fip_address(node, &fip)?, fip["port_id"].is_null()))
    }

    /// A floating IP on the node's port: the one already there (none on a port made by this
    /// run: `new_port`), else the node's allocated one attached now (needs the router
    /// interface), else a new one.
    pub async fn ensure_floating_ip(
        &self,
        node: &str,
        port_id: &str,
        new_port: bool,
    ) -> Result<Ipv4Addr> {
        let existing = if new_port {
            Vec::new()
        } else {
            self.cloud
                .list(
                    "list floating IPs",
                    Req::get(NET, "floatingips").q("port_id", port_id),
                    "floatingips",
                )
                .await?
        };
        if let Some(f) = existing.into_iter().next() {
            self.ensure_tags("floatingips", &f).await?;
            return self.fip_address(node, &f);
        }
        if let Some(f) = self.fips_named(node).await?.into_iter().next() {
            self.ensure_tags("floatingips", &f).await?;
            let id = s(&f["id"]);
            self.cloud
                .call(
                    &format!("attach floating IP {}", s(&f["floating_ip_address"])),
                    &Req::put(
                        NET,
                        format!("floatingips/{id}"),
                        json!({ "floatingip": { "port_id": port_id } }),
                    ),
                    crate::api::Retry::Idempotent,
                )
                .await?;
            return self.fip_address(node, &f);
        }
        let ext = self.external_network().await?;
        let name = self.fip_name(node);
        let f = self
            .create_neutron(
                Kind::FloatingIp,
                &name,
                "floatingips",
                "floatingip",
                json!({
                    "floating_network_id": ext,
                    "port_id": port_id,
                    "description": name,
                }),
            )
            .await?;
        self.fip_address(node, &f)
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

    /// Adds pairs to the port, keeping every pair already there (Neutron's PUT replaces the
    /// list, so read, merge, write).
    pub async fn add_address_pairs(&self, port_id: &str, pairs: &[Ipv4Net]) -> Result<()> {
        let v = self
            .cloud
            .get("get port", Req::get(NET, format!("ports/{port_id}")))
            .await?;
        let mut list: Vec<Value> = v["port"]["allowed_address_pairs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let present: BTreeSet<Ipv4Net> = list
            .iter()
            .filter_map(|p| parse_net(&s(&p["ip_address"])))
            .collect();
        let mut added = false;
        for p in pairs {
            if !present.contains(p) {
                list.push(json!({ "ip_address": p.to_string() }));
                added = true;
            }
        }
        if added {
            self.cloud
                .call(
                    "set allowed-address pairs",
                    &Req::put(
                        NET,
                        format!("ports/{port_id}"),
                        json!({ "port": { "allowed_address_pairs": list } }),
                    ),
                    crate::api::Retry::Idempotent,
                )
                .await?;
        }
        Ok(())
    }

    /// The key a relay printed to its console, if any.
    pub async fn console_public_key(&self, server_id: &str) -> Option<String> {
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
        userdata::public_key_from_console(v["output"].as_str()?)
    }

    // ---- observe

    /// What exists of this site: network, groups and rules, nodes with their public IPs, pairs
    /// and keys.
    /// The third part: relays whose floating IP is allocated but not (yet) on their port.
    pub async fn observe(
        &self,
        plan: &Plan,
    ) -> Result<(
        ObservedSite,
        BTreeMap<String, ObservedNode>,
        BTreeMap<String, Ipv4Addr>,
    )> {
        let group_names: Vec<String> = plan
            .site(&self.site.name)
            .map(|p| p.security_groups.iter().map(|g| g.name.clone()).collect())
            .unwrap_or_default();
        let relay_fips = async {
            match plan.relay_of(&self.site.name) {
                Some(relay) => self.fips_named(&relay.name).await,
                None => Ok(Vec::new()),
            }
        };
        // Independent lookups, concurrently.
        let ((ids, network_ready), groups, relay_fips, servers) = tokio::try_join!(
            self.network_state(),
            self.security_groups(&group_names),
            relay_fips,
            self.servers(false)
        )?;
        let mut site = ObservedSite {
            network: network_ready,
            ..Default::default()
        };
        for (name, g) in groups {
            if !self.tagged(&g) {
                continue;
            }
            let rules = g["security_group_rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(rule_of)
                .collect();
            site.security_groups.insert(name, rules);
        }
        let mut nodes = BTreeMap::new();
        let mut unattached = BTreeMap::new();
        if let Some(relay) = plan.relay_of(&self.site.name) {
            for f in relay_fips {
                if f["port_id"].is_null()
                    && let Ok(ip) = self.fip_address(&relay.name, &f)
                {
                    unattached.insert(relay.name.clone(), ip);
                }
            }
        }
        let Some(ids) = ids else {
            return Ok((site, nodes, unattached));
        };
        let ledger = self.ledger.snapshot();
        let relay = plan.relay_of(&self.site.name).map(|n| n.name.clone());
        // Ports of relays matter even before their server exists (pairs, floating IP).
        let mut names: BTreeSet<String> = servers.iter().map(|s| s.node.clone()).collect();
        names.extend(relay.clone());
        let futs = names.iter().map(|node| {
            let srv = servers.iter().find(|s| &s.node == node);
            let ids = &ids;
            let ledger = &ledger;
            let relay = &relay;
            async move {
                let port = self
                    .node_port(node, srv.map(|s| s.id.as_str()), &ids.net)
                    .await?;
                let mut public_ip = None;
                let mut pairs = None;
                if let Some(p) = &port {
                    let fips = self
                        .cloud
                        .list(
                            "list floating IPs",
                            Req::get(NET, "floatingips").q("port_id", s(&p["id"])),
                            "floatingips",
                        )
                        .await?;
                    public_ip = fips
                        .first()
                        .filter(|f| self.tagged(f))
                        .and_then(|f| s(&f["floating_ip_address"]).parse::<Ipv4Addr>().ok());
                    pairs = Some(
                        p["allowed_address_pairs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| parse_net(&s(&a["ip_address"])))
                            .collect::<Vec<_>>(),
                    );
                }
                let mut key = ledger.public_keys.get(node).cloned();
                if key.is_none()
                    && relay.as_deref() == Some(node.as_str())
                    && let Some(srv) = srv.filter(|s| s.status == "ACTIVE")
                {
                    key = self.console_public_key(&srv.id).await;
                    if let Some(k) = &key {
                        self.ledger.update(|d| {
                            d.public_keys.insert(node.clone(), k.clone());
                        })?;
                    }
                }
                // What the node applies: its user data, merged with what its metadata delivers.
                let observed = srv.map(|srv| ObservedNode {
                    site: self.site.name.clone(),
                    public_ip,
                    public_key: key
                        .and_then(|k| hybridgrid_core::keys::PublicKey::from_base64(&k).ok()),
                    applied: ledger.applied_config(node, &srv.metadata),
                });
                Ok::<_, OsError>((node.clone(), observed, pairs))
            }
        });
        for r in futures::future::join_all(futs).await {
            let (node, observed, pairs) = r?;
            if let Some(p) = pairs {
                site.allowed_address_pairs.insert(node.clone(), p);
            }
            if let Some(o) = observed {
                nodes.insert(node, o);
            }
        }
        Ok((site, nodes, unattached))
    }
}

/// The Neutron body of a planned rule; `None` while its source is a pending public IP.
fn rule_body(group_id: &str, rule: &SgRule) -> Option<Value> {
    let Remote::Cidr(cidr) = &rule.remote else {
        return None;
    };
    let mut body = json!({
        "security_group_id": group_id,
        "direction": "ingress",
        "ethertype": "IPv4",
        "remote_ip_prefix": cidr.to_string(),
        "description": rule.description,
    });
    body["protocol"] = match rule.protocol {
        Protocol::Any => Value::Null,
        Protocol::Tcp => json!("tcp"),
        Protocol::Udp => json!("udp"),
        Protocol::Icmp => json!("icmp"),
    };
    if let Some((lo, hi)) = rule.ports {
        body["port_range_min"] = json!(lo);
        body["port_range_max"] = json!(hi);
    }
    Some(body)
}

/// An ingress IPv4 rule as the plan writes it; `None` for egress, IPv6 and group-sourced rules.
pub(crate) fn rule_of(r: &Value) -> Option<SgRule> {
    if s(&r["direction"]) != "ingress" || s(&r["ethertype"]) != "IPv4" {
        return None;
    }
    let cidr = parse_net(r["remote_ip_prefix"].as_str()?)?;
    let protocol = match r["protocol"].as_str() {
        None => Protocol::Any,
        Some("tcp") | Some("6") => Protocol::Tcp,
        Some("udp") | Some("17") => Protocol::Udp,
        Some("icmp") | Some("1") => Protocol::Icmp,
        Some(_) => return None,
    };
    let lo = r["port_range_min"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok());
    let hi = r["port_range_max"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok());
    let ports = match (protocol, lo, hi) {
        (Protocol::Tcp | Protocol::Udp, Some(lo), Some(hi)) => Some((lo, hi)),
        _ => None,
    };
    Some(SgRule {
        protocol,
        ports,
        remote: Remote::Cidr(cidr),
        description: s(&r["description"]),
    })
}

/// `10.1.0.0/24` or a bare address (a /32).
pub(crate) fn parse_net(text: &str) -> Option<Ipv4Net> {
    text.parse::<Ipv4Net>()
        .ok()
        .or_else(|| text.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

pub(crate) fn find_by_name_or_id<'a>(list: &'a [Value], want: &str) -> Option<&'a Value> {
    list.iter()
        .find(|v| s(&v["id"]) == want)
        .or_else(|| list.iter().find(|v| s(&v["name"]) == want))
}
