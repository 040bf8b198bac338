//! A site's security groups and their ingress rules, and the translation between the plan's
//! rules and Neutron's.

use std::collections::BTreeMap;

use hybridgrid_core::plan::{Protocol, Remote, SgRule};
use serde_json::{Value, json};

use crate::api::{NET, Req, need_id};
use crate::error::Result;
use crate::ledger::Kind;
use crate::site::SiteOps;
use crate::site::parse_net;

impl SiteOps {
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
            .filter_map(|g| {
                let name = g["name"]
                    .as_str()
                    .filter(|n| names.iter().any(|x| x == n))?;
                Some((name.to_owned(), g))
            })
            .collect())
    }

    pub async fn ensure_security_group(&self, name: &str) -> Result<String> {
        if let Some(g) = self.security_groups(&[name.to_owned()]).await?.remove(name) {
            self.ensure_tags("security-groups", &g).await?;
            return need_id(&g, NET, &format!("security group {name}"));
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
        need_id(&g, NET, &format!("security group {name}"))
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
                let id = need_id(r, NET, &format!("a rule of {}", rule.match_text()))?;
                self.cloud
                    .delete(
                        "delete security group rule",
                        Req::delete(NET, format!("security-group-rules/{id}")),
                    )
                    .await?;
            }
        }
        Ok(())
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
    if r["direction"].as_str() != Some("ingress") || r["ethertype"].as_str() != Some("IPv4") {
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
        // Free text that may be null: no description is an empty one (the rule's identity,
        // `SgRule::key`, leaves it out).
        description: r["description"].as_str().unwrap_or_default().to_owned(),
    })
}
