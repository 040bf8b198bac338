//! A site's ports on Neutron: the node's port, floating IPs (allocated, attached) and
//! allowed-address pairs (merged, never replaced).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hybridgrid_core::plan::NodePlan;
use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::api::{NET, Req, missing, need_id};
use crate::error::Result;
use crate::ledger::Kind;
use crate::site::{NetIds, SiteOps, parse_net};

impl SiteOps {
    pub async fn find_port(&self, node: &str, net_id: &str) -> Result<Option<Value>> {
        self.port_named(&self.port_name(node), net_id).await
    }

    /// The port called `name` on the network `net_id`, if there is one.
    pub async fn port_named(&self, name: &str, net_id: &str) -> Result<Option<Value>> {
        self.find_one(
            "ports",
            Req::get(NET, "ports")
                .q("name", name)
                .q("network_id", net_id),
        )
        .await
    }

    /// The floating IPs on the port `port_id`.
    pub async fn fips_on_port(&self, port_id: &str) -> Result<Vec<Value>> {
        self.cloud
            .list(
                "list floating IPs",
                Req::get(NET, "floatingips").q("port_id", port_id),
                "floatingips",
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
            let l = self.device_ports("list server ports", sid, net_id).await?;
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
            return Ok((need_id(&p, NET, &format!("port of {}", node.name))?, false));
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
        Ok((need_id(&p, NET, &format!("port {name}"))?, true))
    }

    /// The project's floating IPs.
    pub async fn project_fips(&self) -> Result<Vec<Value>> {
        self.cloud
            .list(
                "list floating IPs",
                Req::get(NET, "floatingips").q("project_id", self.cloud.project_id.as_str()),
                "floatingips",
            )
            .await
    }

    /// The project's floating IPs named (by description) for this node.
    pub async fn fips_named(&self, node: &str) -> Result<Vec<Value>> {
        let name = self.fip_name(node);
        Ok(self
            .project_fips()
            .await?
            .into_iter()
            .filter(|f| f["description"].as_str() == Some(name.as_str()))
            .collect())
    }

    /// The address of the node's floating IP: one without is an error.
    pub(crate) fn fip_address(&self, node: &str, fip: &Value) -> Result<Ipv4Addr> {
        let field = "floating_ip_address";
        fip[field]
            .as_str()
            .ok_or_else(|| missing(NET, &format!("the floating IP of {node}"), field))?
            .parse()
            .map_err(|_| self.site_err(format!("floating IP of {node} has no IPv4 address")))
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
            self.fips_on_port(port_id).await?
        };
        if let Some(f) = existing.into_iter().next() {
            self.ensure_tags("floatingips", &f).await?;
            return self.fip_address(node, &f);
        }
        if let Some(f) = self.fips_named(node).await?.into_iter().next() {
            self.ensure_tags("floatingips", &f).await?;
            let id = need_id(&f, NET, &format!("the floating IP of {node}"))?;
            let ip = self.fip_address(node, &f)?;
            self.cloud
                .call(
                    &format!("attach floating IP {ip}"),
                    &Req::put(
                        NET,
                        format!("floatingips/{id}"),
                        json!({ "floatingip": { "port_id": port_id } }),
                    ),
                    crate::api::Retry::Idempotent,
                )
                .await?;
            return Ok(ip);
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

    /// Adds pairs to the port, keeping every pair already there (Neutron's PUT replaces the
    /// list, so read, merge, write).
    pub async fn add_address_pairs(&self, port_id: &str, pairs: &[Ipv4Net]) -> Result<()> {
        let v = self
            .cloud
            .get("get port", Req::get(NET, format!("ports/{port_id}")))
            .await?;
        // The PUT replaces the list: without the current one, nothing is written.
        let field = "allowed_address_pairs";
        let mut list: Vec<Value> = v["port"][field]
            .as_array()
            .cloned()
            .ok_or_else(|| missing(NET, &format!("port {port_id}"), field))?;
        // Pairs that are not IPv4 (IPv6, a MAC only) are kept as they are.
        let present: BTreeSet<Ipv4Net> = list
            .iter()
            .filter_map(|p| p["ip_address"].as_str().and_then(parse_net))
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
}
