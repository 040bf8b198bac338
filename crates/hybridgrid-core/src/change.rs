//! One named step from what exists to what the plan wants; what `plan` prints and `up` applies.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::node::{Role, SgRule};

/// One named step from what is to what should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    CreateNetwork {
        site: String,
    },
    /// local: emulate these WAN conditions on what leaves the site (`None`: none).
    SetWan {
        site: String,
        wan: Option<crate::model::Wan>,
    },
    CreateSecurityGroup {
        site: String,
        group: String,
    },
    AddRule {
        site: String,
        group: String,
        rule: SgRule,
    },
    CreateNode {
        site: String,
        node: String,
        role: Role,
    },
    /// A relay pair's virtual address on the site LAN (openstack: an unbound port holding it);
    /// its public IP is an `AssignPublicIp` for the pair's identity.
    CreateVirtualAddress {
        site: String,
        name: String,
        address: Ipv4Addr,
    },
    /// Allocates a public IP for the node (or a relay pair's identity) and attaches it once the
    /// node (or its virtual address) exists.
    AssignPublicIp {
        site: String,
        node: String,
    },
    /// Attaches the public IP already reserved for the node.
    AttachPublicIp {
        site: String,
        node: String,
        ip: Ipv4Addr,
    },
    /// Adds pairs to the port; pairs already there (the user's too) are kept.
    AddAddressPairs {
        site: String,
        node: String,
        pairs: Vec<Ipv4Net>,
    },
    ConfigureNode {
        site: String,
        node: String,
        details: Vec<String>,
    },
    RemoveRule {
        site: String,
        group: String,
        rule: SgRule,
    },
    RemoveNode {
        site: String,
        node: String,
    },
    /// A relay pair's virtual address the plan no longer has, with its public IP.
    RemoveVirtualAddress {
        site: String,
        name: String,
    },
    RemoveSecurityGroup {
        site: String,
        group: String,
    },
    RemoveNetwork {
        site: String,
    },
}

impl Change {
    /// The site the change is made at.
    pub fn site(&self) -> &str {
        match self {
            Change::CreateNetwork { site }
            | Change::SetWan { site, .. }
            | Change::CreateSecurityGroup { site, .. }
            | Change::AddRule { site, .. }
            | Change::CreateNode { site, .. }
            | Change::CreateVirtualAddress { site, .. }
            | Change::RemoveVirtualAddress { site, .. }
            | Change::AssignPublicIp { site, .. }
            | Change::AttachPublicIp { site, .. }
            | Change::AddAddressPairs { site, .. }
            | Change::ConfigureNode { site, .. }
            | Change::RemoveRule { site, .. }
            | Change::RemoveNode { site, .. }
            | Change::RemoveSecurityGroup { site, .. }
            | Change::RemoveNetwork { site } => site,
        }
    }

    /// One line for humans, as `plan` prints it.
    pub fn summary(&self) -> String {
        match self {
            Change::CreateNetwork { site } => format!("+ {site}: network, subnet and router"),
            Change::SetWan { site, wan: Some(w) } => {
                format!(
                    "~ {site}: WAN conditions on what leaves {site}: {}",
                    w.describe()
                )
            }
            Change::SetWan { site, wan: None } => {
                format!("~ {site}: no WAN conditions on what leaves {site}")
            }
            Change::CreateSecurityGroup { site, group } => {
                format!("+ {site}: security group {group}")
            }
            Change::AddRule { site, group, rule } => {
                format!("+ {site}: rule in {group}: {}", rule_text(rule))
            }
            Change::CreateNode { site, node, role } => {
                format!("+ {site}: node {node} ({})", role.as_str())
            }
            Change::CreateVirtualAddress {
                site,
                name,
                address,
            } => format!("+ {site}: virtual address {address} for relay pair {name}"),
            Change::RemoveVirtualAddress { site, name } => {
                format!("- {site}: virtual address of relay pair {name}")
            }
            Change::AssignPublicIp { site, node } => format!("+ {site}: public IP for {node}"),
            Change::AttachPublicIp { site, node, ip } => {
                format!("+ {site}: attach public IP {ip} to {node}")
            }
            Change::AddAddressPairs { site, node, pairs } => {
                let list: Vec<String> = pairs.iter().map(ToString::to_string).collect();
                format!(
                    "+ {site}: allowed-address pairs on {node}'s port: {}",
                    list.join(", ")
                )
            }
            Change::ConfigureNode {
                site,
                node,
                details,
            } => {
                format!("~ {site}: configure {node}: {}", details.join("; "))
            }
            Change::RemoveRule { site, group, rule } => {
                format!("- {site}: rule in {group}: {}", rule_text(rule))
            }
            Change::RemoveNode { site, node } => format!("- {site}: node {node}"),
            Change::RemoveSecurityGroup { site, group } => {
                format!("- {site}: security group {group}")
            }
            Change::RemoveNetwork { site } => format!("- {site}: network, subnet and router"),
        }
    }
}

/// `udp 51820 from 198.51.100.20/32 (WireGuard from giessen-gw)`.
pub fn rule_text(rule: &SgRule) -> String {
    format!("{} ({})", rule.match_text(), rule.description)
}
