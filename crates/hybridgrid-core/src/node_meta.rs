//! Delivery of a node's WireGuard peers after boot, as key/value metadata (OpenStack server
//! metadata, read on the node from `meta_data.json`).
//!
//! The provider writes [`items`] of the node's wanted configuration; the node merges them into the
//! configuration it booted with ([`merge`]) and applies the result. The provider computes the same
//! merge to know what the node applies. Pure: no I/O.
//!
//! Items (values ≤ 255 characters):
//! - `hg_peer_<node>` = `<public key|-> <endpoint|-> <allowed-ips comma-separated|-> <keepalive|-> <site>`
//! - `hg_config_version` = [`digest`] of the node's configuration without hosts.
//!
//! Without `hg_config_version` the metadata says nothing and the booted configuration stands.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use crate::keys::PublicKey;
use crate::plan::{NodeConfig, WgPeer};

pub const PEER_PREFIX: &str = "hg_peer_";
pub const VERSION_KEY: &str = "hg_config_version";
/// Nova's limit on a metadata value (and key).
pub const MAX_LEN: usize = 255;

/// Why metadata could not be read or merged.
#[derive(Debug, Clone, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
pub enum MetaError {
    /// metadata is not JSON with a `meta` object: {0}
    NotMetadata(String),
    /// metadata item {key}: {message}
    Item { key: String, message: String },
}

/// Whether a metadata key is one of the delivery items (the provider replaces exactly these).
pub fn is_delivery_key(key: &str) -> bool {
    key == VERSION_KEY || key.starts_with(PEER_PREFIX)
}

/// A stable digest of the configuration (FNV-1a, 64 bits, of its JSON), 16 hex digits.
pub fn digest(config: &NodeConfig) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_owned())
}

/// One peer as a metadata value.
pub fn peer_value(p: &WgPeer) -> String {
    let allowed: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
    format!(
        "{} {} {} {} {}",
        or_dash(p.public_key.map(|k| k.to_base64())),
        or_dash(p.endpoint.map(|e| e.to_string())),
        if allowed.is_empty() {
            "-".to_owned()
        } else {
            allowed.join(",")
        },
        or_dash(p.persistent_keepalive.map(|k| k.to_string())),
        p.site
    )
}

/// The peer `node` from its metadata value.
pub fn parse_peer(node: &str, value: &str) -> Result<WgPeer, MetaError> {
    let key = format!("{PEER_PREFIX}{node}");
    let err = |m: String| MetaError::Item {
        key: key.clone(),
        message: m,
    };
    let f: Vec<&str> = value.split_whitespace().collect();
    let [k, endpoint, allowed, keepalive, site] = f[..] else {
        return Err(err(format!("expected 5 fields, got {}", f.len())));
    };
    let dash = |s: &str| (s != "-").then_some(s.to_owned());
    let public_key = dash(k)
        .map(|k| PublicKey::from_base64(&k).map_err(|e| err(format!("public key: {e}"))))
        .transpose()?;
    let endpoint = dash(endpoint)
        .map(|e| {
            e.parse::<SocketAddrV4>()
                .map_err(|_| err(format!("endpoint `{e}`")))
        })
        .transpose()?;
    let allowed_ips = match dash(allowed) {
        None => Vec::new(),
        Some(a) => a
            .split(',')
            .map(|n| {
                n.parse::<Ipv4Net>()
                    .map_err(|_| err(format!("allowed IPs `{n}`")))
            })
            .collect::<Result<_, _>>()?,
    };
    let persistent_keepalive = dash(keepalive)
        .map(|k| {
            k.parse::<u16>()
                .map_err(|_| err(format!("keepalive `{k}`")))
        })
        .transpose()?;
    Ok(WgPeer {
        node: node.to_owned(),
        site: site.to_owned(),
        public_key,
        endpoint,
        allowed_ips,
        persistent_keepalive,
    })
}

/// The metadata items delivering `config` (the node's configuration without hosts): its peers and
/// the version. Empty for nodes without WireGuard (nothing to deliver after boot).
pub fn items(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(wg) = &config.wireguard else {
        return out;
    };
    for p in &wg.peers {
        out.insert(format!("{PEER_PREFIX}{}", p.node), peer_value(p));
    }
    out.insert(VERSION_KEY.to_owned(), digest(config));
    out
}

/// `base` (the configuration the node booted with) with the peers the metadata delivers: with a
/// version item, the node's peers are exactly the `hg_peer_*` items (peers already known keep
/// their place, new ones follow by name). Other keys are ignored.
pub fn merge(base: &NodeConfig, meta: &BTreeMap<String, String>) -> Result<NodeConfig, MetaError> {
    let mut out = base.clone();
    if !meta.contains_key(VERSION_KEY) {
        return Ok(out);
    }
    let Some(wg) = &mut out.wireguard else {
        return Ok(out);
    };
    let mut delivered: BTreeMap<String, WgPeer> = BTreeMap::new();
    for (k, v) in meta {
        if let Some(node) = k.strip_prefix(PEER_PREFIX) {
            delivered.insert(node.to_owned(), parse_peer(node, v)?);
        }
    }
    let mut peers = Vec::new();
    for p in &wg.peers {
        if let Some(q) = delivered.remove(&p.node) {
            peers.push(q);
        }
    }
    peers.extend(delivered.into_values());
    // Whoever can set server metadata must not be able to take the node's own site or its
    // tunnel address, or another peer's range (WireGuard routes a range to one peer only).
    let own: Vec<Ipv4Addr> = out
        .hosts
        .iter()
        .filter(|(_, name)| *name == out.hostname)
        .map(|(ip, _)| *ip)
        .chain(std::iter::once(wg.address.addr()))
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let key = format!("{PEER_PREFIX}{}", p.node);
        for net in &p.allowed_ips {
            if let Some(ip) = own.iter().find(|ip| net.contains(*ip)) {
                return Err(MetaError::Item {
                    key,
                    message: format!("allowed IPs {net} claim this node's own address {ip}"),
                });
            }
            if let Some(q) = peers[..i].iter().find(|q| {
                q.allowed_ips
                    .iter()
                    .any(|m| m.contains(net) || net.contains(m))
            }) {
                return Err(MetaError::Item {
                    key,
                    message: format!("allowed IPs {net} overlap those of peer {}", q.node),
                });
            }
        }
    }
    wg.peers = peers;
    Ok(out)
}

/// The `meta` object of an OpenStack `meta_data.json` (string values only).
pub fn meta_from_json(text: &str) -> Result<BTreeMap<String, String>, MetaError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| MetaError::NotMetadata(e.to_string()))?;
    match &v["meta"] {
        serde_json::Value::Object(m) => Ok(m
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect()),
        serde_json::Value::Null => Ok(BTreeMap::new()),
        _ => Err(MetaError::NotMetadata("`meta` is not an object".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::diff::{Observed, ObservedNode, config_differences};
    use crate::keys::PrivateKey;
    use crate::model::validate_text;
    use crate::plan;

    const CLUSTER: &str = r#"
version: 1
name: meta
provider: openstack
sites:
  - name: a
    master: true
    cloud: site-a
    subnet: 10.31.0.0/24
    gateway: { flavor: m1.tiny, image: img }
  - name: b
    cloud: site-b
    subnet: 10.32.0.0/24
    gateway: { flavor: m1.tiny, image: img }
  - name: c
    cloud: site-c
    subnet: 10.33.0.0/24
    gateway: { flavor: m1.tiny, image: img }
"#;

    fn plans() -> (plan::Plan, plan::Plan, PublicKey) {
        let (c, d) = validate_text(CLUSTER);
        let c = c.unwrap_or_else(|| panic!("{d:?}"));
        let boot = crate::reconcile::plan(&c, &Observed::default());
        let key = PrivateKey::from_seed("b-gw").public_key();
        let mut obs = Observed::default();
        for (n, ip) in [("a-master", [203, 0, 113, 10]), ("b-gw", [203, 0, 113, 11])] {
            obs.nodes.insert(
                n.into(),
                ObservedNode {
                    site: n[..1].into(),
                    public_ip: Some(ip.into()),
                    public_key: (n == "b-gw").then_some(key),
                    applied: None,
                    measured: None,
                    instance: None,
                },
            );
        }
        (boot, crate::reconcile::plan(&c, &obs), key)
    }

    #[test]
    fn items_parse_back_and_merge_to_the_wanted_config() {
        let (boot, later, key) = plans();
        let node = later.node("a-master").unwrap();
        let wanted = later.node_config_without_hosts(node);
        let base = boot.node_config(boot.node("a-master").unwrap());
        let items = items(&wanted);
        assert!(items.values().all(|v| v.len() <= MAX_LEN));
        assert!(items.keys().all(|k| is_delivery_key(k)));
        assert_eq!(
            items["hg_peer_b-gw"],
            format!("{key} 203.0.113.11:51820 10.0.0.2/32,10.32.0.0/24 25 b")
        );
        let merged = merge(&base, &items).unwrap();
        assert!(
            config_differences(Some(&merged), &wanted, &later.hosts).is_empty(),
            "{:?}",
            config_differences(Some(&merged), &wanted, &later.hosts)
        );
        // A version of the configuration the node can compare.
        assert_eq!(items[VERSION_KEY], digest(&wanted));
        assert_ne!(
            digest(&wanted),
            digest(&boot.node_config_without_hosts(boot.node("a-master").unwrap()))
        );
    }

    #[test]
    fn meta_data_json_sample_merges_peers_and_drops_peers_that_left() {
        let (boot, _, key) = plans();
        let base = boot.node_config(boot.node("a-master").unwrap());
        assert_eq!(base.wireguard.as_ref().unwrap().peers.len(), 2);
        // As the metadata service serves it (other keys of Nova's meta_data.json included).
        let sample = format!(
            r#"{{"uuid": "0b0c", "name": "meta-a-master", "hostname": "meta-a-master",
               "availability_zone": "nova", "launch_index": 0, "project_id": "p",
               "meta": {{"hybridgrid_cluster": "meta", "hybridgrid_node": "a-master",
                         "hg_config_version": "00ff", "hg_peer_b-gw":
                         "{key} 203.0.113.11:51820 10.0.0.2/32,10.32.0.0/24 25 b"}}}}"#
        );
        let meta = meta_from_json(&sample).unwrap();
        let merged = merge(&base, &meta).unwrap();
        let peers = &merged.wireguard.unwrap().peers;
        assert_eq!(peers.len(), 1, "c-gw is not in the metadata: gone");
        assert_eq!(peers[0].node, "b-gw");
        assert_eq!(peers[0].site, "b");
        assert_eq!(peers[0].public_key, Some(key));
        assert_eq!(
            peers[0].endpoint,
            Some("203.0.113.11:51820".parse().unwrap())
        );
        assert_eq!(peers[0].persistent_keepalive, Some(25));
        // Everything else as booted.
        assert_eq!(merged.routes, base.routes);
        assert_eq!(merged.hosts, base.hosts);
    }

    /// Server metadata is writable by whoever holds the project's credentials: a delivered peer
    /// must not take the node's own site or another peer's range.
    #[test]
    fn peers_claiming_the_own_site_or_overlapping_are_refused() {
        let (boot, _, key) = plans();
        let base = boot.node_config(boot.node("a-master").unwrap());
        let own = base
            .hosts
            .iter()
            .find(|(_, n)| *n == base.hostname)
            .unwrap()
            .0;
        let own_net = Ipv4Net::new(own, 24).unwrap().trunc();
        let meta = |peers: &[(&str, String)]| {
            let mut m: BTreeMap<String, String> =
                [(VERSION_KEY.to_owned(), "00ff".to_owned())].into();
            for (node, allowed) in peers {
                m.insert(
                    format!("{PEER_PREFIX}{node}"),
                    format!("{key} 203.0.113.11:51820 {allowed} 25 b"),
                );
            }
            m
        };
        let err = merge(&base, &meta(&[("b-gw", format!("10.0.0.2/32,{own_net}"))])).unwrap_err();
        assert!(
            err.to_string().contains("claim this node's own address"),
            "{err}"
        );
        let wide = merge(&base, &meta(&[("b-gw", "0.0.0.0/0".into())])).unwrap_err();
        assert!(wide.to_string().contains("own address"), "{wide}");
        let overlap = merge(
            &base,
            &meta(&[
                ("b-gw", "10.0.0.2/32,10.32.0.0/24".into()),
                ("c-gw", "10.0.0.3/32,10.32.0.128/25".into()),
            ]),
        )
        .unwrap_err();
        assert!(
            overlap.to_string().contains("overlap those of peer b-gw"),
            "{overlap}"
        );
        assert!(merge(&base, &meta(&[("b-gw", "10.0.0.2/32,10.32.0.0/24".into())])).is_ok());
    }

    #[test]
    fn without_a_version_or_wireguard_the_base_stands() {
        let (boot, ..) = plans();
        let base = boot.node_config(boot.node("a-master").unwrap());
        let meta = meta_from_json(r#"{"meta": {"hg_peer_b-gw": "garbage"}}"#).unwrap();
        assert_eq!(merge(&base, &meta).unwrap(), base);
        assert_eq!(meta_from_json(r#"{"uuid": "x"}"#).unwrap().len(), 0);
        assert!(meta_from_json("not json").is_err());
    }

    #[test]
    fn malformed_items_are_refused() {
        let (boot, ..) = plans();
        let base = boot.node_config(boot.node("a-master").unwrap());
        for bad in [
            "- - -",
            "nokey 1.2.3.4:5 10.0.0.2/32 25 b",
            "- 1.2.3.4 10.0.0.2/32 25 b",
            "- - 10.0.0.2 25 b",
            "- - - x b",
        ] {
            let meta = BTreeMap::from([
                (VERSION_KEY.to_owned(), "1".to_owned()),
                ("hg_peer_b-gw".to_owned(), bad.to_owned()),
            ]);
            assert!(merge(&base, &meta).is_err(), "{bad}");
        }
        let meta = BTreeMap::from([
            (VERSION_KEY.to_owned(), "1".to_owned()),
            ("hg_peer_b-gw".to_owned(), "- - - - b".to_owned()),
        ]);
        let p = &merge(&base, &meta).unwrap().wireguard.unwrap().peers[0];
        assert!(p.public_key.is_none() && p.endpoint.is_none() && p.allowed_ips.is_empty());
    }
}
