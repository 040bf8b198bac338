//! What a cloud operator does to a running local cluster behind hybridgrid's back — a rule
//! deleted from a security group, an allowed-address pair removed from a port — and the
//! counters they would read, for the lab tests that break a cluster on purpose. Built on the
//! emulation's own names (`names`, the tables `infra` renders), so no test names an nftables
//! table, chain or set.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::names::{PORTSEC_TABLE, SG_CHAIN, SG_TABLE};
use crate::{LocalError, live, names, sh};

fn nft_in(ns: &str, args: &[&str]) -> Result<String, LocalError> {
    let mut all = vec![sh::net_of(ns), "--".to_owned(), "nft".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sh::run("nsenter", &refs)
}

/// `node`'s security group as `nft` lists it (its rules, their counters).
pub fn security_group(cluster: &str, node: &str) -> Option<String> {
    live::nft_table(&names::ns_node(cluster, node), "inet", SG_TABLE)
}

/// Deletes the first rule of `node`'s security group whose `nft` line satisfies `matching`;
/// the line deleted, `None` when no rule matched.
pub fn remove_rule(
    cluster: &str,
    node: &str,
    matching: impl Fn(&str) -> bool,
) -> Result<Option<String>, LocalError> {
    let ns = names::ns_node(cluster, node);
    let listing = nft_in(&ns, &["-a", "list", "chain", "inet", SG_TABLE, SG_CHAIN])?;
    let Some((line, handle)) = first_rule(&listing, matching) else {
        return Ok(None);
    };
    nft_in(
        &ns,
        &[
            "delete", "rule", "inet", SG_TABLE, SG_CHAIN, "handle", handle,
        ],
    )?;
    Ok(Some(line.to_owned()))
}

/// The first rule of an `nft -a list chain` listing that `matching` accepts, with its handle:
/// the table's and chain's own lines (`table … {`, `chain … {`, which carry handles too) are
/// not rules, and a line without a handle is not one `nft` could delete.
fn first_rule(listing: &str, matching: impl Fn(&str) -> bool) -> Option<(&str, &str)> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("table ") && !l.starts_with("chain ") && !l.contains('{'))
        .filter(|l| matching(l))
        .find_map(|l| Some((l, l.rsplit_once("# handle ")?.1.trim())))
}

/// The switch port of the node at `lan_ip` on `site`'s `subnet`, as `nft` names its chain.
fn port_chain(subnet: Ipv4Net, lan_ip: Ipv4Addr) -> String {
    names::node_port(subnet, lan_ip).replace('-', "_")
}

/// Removes `pair` from the allowed-address pairs of the port of the node at `lan_ip` (on
/// `site`'s `subnet`).
pub fn remove_address_pair(
    cluster: &str,
    site: &str,
    subnet: Ipv4Net,
    lan_ip: Ipv4Addr,
    pair: Ipv4Net,
) -> Result<(), LocalError> {
    let set = names::aap_set(&port_chain(subnet, lan_ip));
    let element = format!("{{ {pair} }}");
    nft_in(
        &names::ns_switch(cluster, site),
        &["delete", "element", "bridge", PORTSEC_TABLE, &set, &element],
    )?;
    Ok(())
}

/// Packets the switch dropped as spoofed at the port of the node at `lan_ip`.
pub fn spoof_drops(cluster: &str, site: &str, subnet: Ipv4Net, lan_ip: Ipv4Addr) -> Option<u64> {
    let table = live::nft_table(&names::ns_switch(cluster, site), "bridge", PORTSEC_TABLE)?;
    let chain = live::chain_lines(&table, &port_chain(subnet, lan_ip)).join("\n");
    live::counter(&chain, "ip spoof")
}

/// Packets `site`'s switch dropped as spoofed, all ports together.
pub fn spoof_drops_at_switch(cluster: &str, site: &str) -> Option<u64> {
    let table = live::nft_table(&names::ns_switch(cluster, site), "bridge", PORTSEC_TABLE)?;
    live::counter(&table, "ip spoof")
}

/// The data store of `site` loses its network namespace while its servers run on in it — what
/// an `up` killed while making the store leaves behind (the next `up` makes the namespace again).
pub fn lose_store_network(cluster: &str, site: &str) -> Result<(), LocalError> {
    sh::run(
        "ip",
        &["netns", "del", &crate::datastore::ns_store(cluster, site)],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::first_rule;

    #[test]
    fn regression_a_matcher_that_fits_the_table_header_removes_a_rule_not_the_table() {
        let listing = "table inet hg_sg { # handle 7\n\tchain input { # handle 1\n\t\ttype filter \
                       hook input priority 0; policy drop;\n\t\tip saddr 10.71.0.0/24 accept # handle 4\n\
                       \t\tudp dport 51820 accept # handle 5\n\t}\n}\n";
        assert_eq!(
            first_rule(listing, |l| l.contains("hg_sg") || l.contains("51820")),
            Some(("udp dport 51820 accept # handle 5", "5"))
        );
        assert_eq!(first_rule(listing, |l| l.contains("input")), None);
        assert_eq!(first_rule("ip saddr 1.2.3.4 accept", |_| true), None);
    }
}
