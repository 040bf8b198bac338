//! Reading the live emulated cloud: nftables tables, sets and counters, interfaces. What
//! `observe` and `doctor` both look at, so they never disagree about what exists.

use std::net::Ipv4Addr;
use std::time::Duration;

use hybridgrid_core::plan::{Plan, Protocol, Remote, SgRule};
use hybridgrid_engine::doctor::MissingRule;
use ipnet::Ipv4Net;

use crate::sh;

/// The `nft` ruleset of a table in a namespace; `None` if it cannot be read.
pub(crate) fn nft_table(ns: &str, family: &str, table: &str) -> Option<String> {
    sh::run(
        "nsenter",
        &[&sh::net_of(ns), "--", "nft", "list", "table", family, table],
    )
    .ok()
}

/// The lines of one chain's body.
pub(crate) fn chain_lines<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
    let head = format!("chain {chain} {{");
    text.lines()
        .skip_while(|l| l.trim() != head)
        .skip(1)
        .take_while(|l| l.trim() != "}")
        .map(str::trim)
        .collect()
}

/// `counter packets N` of the lines containing `comment`, summed.
pub(crate) fn counter(text: &str, comment: &str) -> Option<u64> {
    let mut found = None;
    for l in text.lines().filter(|l| l.contains(comment)) {
        let n = l
            .split_once("packets ")
            .and_then(|(_, r)| r.split_whitespace().next()?.parse::<u64>().ok())?;
        *found.get_or_insert(0) += n;
    }
    found
}

/// The nftables match of a rule as `nft list` prints it (see `infra::render_security_groups`).
pub(crate) fn rule_match(rule: &SgRule) -> Option<String> {
    let Remote::Cidr(net) = &rule.remote else {
        return None;
    };
    let src = if net.prefix_len() == 32 {
        net.addr().to_string()
    } else {
        net.to_string()
    };
    let ports = |proto: &str| match rule.ports {
        None => format!("meta l4proto {proto}"),
        Some((a, b)) if a == b => format!("{proto} dport {a}"),
        Some((a, b)) => format!("{proto} dport {a}-{b}"),
    };
    let m = match rule.protocol {
        Protocol::Any => String::new(),
        Protocol::Icmp => "meta l4proto icmp".to_owned(),
        Protocol::Tcp => ports("tcp"),
        Protocol::Udp => ports("udp"),
    };
    Some(format!("ip saddr {src} {m}").trim().to_owned())
}

/// Planned rules of `node` (with a known remote) missing from its live `rules` chain.
pub(crate) fn missing_rules(
    plan: &Plan,
    node: &str,
    site: &str,
    sg: Option<&str>,
) -> Vec<MissingRule> {
    let live: Vec<String> = sg
        .map(|t| {
            chain_lines(t, "rules")
                .into_iter()
                .map(|l| l.split(" counter").next().unwrap_or(l).trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    plan.site(site)
        .map(|s| s.security_groups.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|g| g.members.iter().any(|m| m == node))
        .flat_map(|g| g.rules.iter().map(move |r| (g, r)))
        .filter(|(_, r)| rule_match(r).is_some_and(|m| !live.contains(&m)))
        .map(|(g, r)| MissingRule {
            group: g.name.clone(),
            rule: r.clone(),
            by_hand: None,
        })
        .collect()
}

/// The elements of `set NAME` in an nft listing.
pub(crate) fn set_elements(text: &str, set: &str) -> Option<Vec<Ipv4Net>> {
    let head = format!("set {set} {{");
    let start = text.find(&head)?;
    let body = &text[start + head.len()..];
    let body = &body[..body.find("\n\t}").or_else(|| body.find("\n  }"))?];
    let Some((_, elements)) = body.split_once("elements = {") else {
        return Some(Vec::new());
    };
    let elements = elements.split('}').next().unwrap_or("");
    Some(
        elements
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .filter_map(|w| {
                w.parse::<Ipv4Net>()
                    .ok()
                    .or_else(|| w.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
            })
            .collect(),
    )
}

pub(crate) fn live_mtu(ns: &str, ifname: &str) -> Option<u16> {
    let out = sh::run("ip", &["-n", ns, "-o", "link", "show", "dev", ifname]).ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)?
        .parse()
        .ok()
}

/// Whether an interface that is up in the namespace holds `ip` (a relay pair's active relay
/// holds the pair's virtual address; a dead one's port is down).
pub(crate) fn holds_address(ns: &str, ip: Ipv4Addr) -> bool {
    sh::run("ip", &["-n", ns, "-o", "-4", "addr", "show", "up"]).is_ok_and(|out| {
        out.split_whitespace()
            .any(|w| w.split('/').next() == Some(&ip.to_string()))
    })
}

/// Pings from the namespace, one every 200 ms until one is answered, for at most 2 s; true if
/// one was. A healthy path answers the first at once: `status` of 1,050 nodes sends 3,500
/// probes, and two pings each 200 ms apart were most of its time. Sent by this process
/// (`crate::icmp`); with `df_size`, that many bytes with don't-fragment set, by `ping`.
pub(crate) fn ping(ns: &str, to: Ipv4Addr, df_size: Option<u16>) -> bool {
    if df_size.is_none() {
        return crate::icmp::answers(ns, to, Duration::from_secs(2));
    }
    let to = to.to_string();
    let net = sh::net_of(ns);
    let mut args = vec![
        net.as_str(),
        "--",
        "ping",
        "-q",
        "-n",
        "-c",
        "1",
        "-i",
        "0.2",
        "-w",
        "2",
    ];
    let size;
    if let Some(s) = df_size {
        size = s.to_string();
        args.extend(["-M", "do", "-s", &size]);
    }
    args.push(&to);
    sh::ok("nsenter", &args)
}

/// The match part of every line of the `rules` chain of a node's `hg_sg` table.
pub(crate) fn rule_lines(sg: &str) -> Vec<String> {
    chain_lines(sg, "rules")
        .into_iter()
        .map(|l| l.split(" counter").next().unwrap_or(l).trim().to_owned())
        .collect()
}

/// The destinations of the IPv4 routes that the process `pid` sees (its network's main table,
/// the default route left out), from `/proc/PID/net/route`: no process started, as
/// `ip route show` would.
pub(crate) fn route_destinations_of(pid: u32) -> Option<Vec<Ipv4Net>> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?;
    Some(hybridgrid_agent::routes::LiveRoutes::destinations_in_proc(
        &table,
    ))
}

/// Whether the network the process `pid` sees has `ifname` (`/proc/PID/net/dev`).
pub(crate) fn has_interface(pid: u32, ifname: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .is_ok_and(|t| hybridgrid_agent::interface_listed(&t, ifname))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// The WireGuard rule from bielefeld-master's public IP `ip` (for the tests of `doctor` too).
    pub(crate) fn wg_rule(ip: &str) -> SgRule {
        SgRule {
            protocol: Protocol::Udp,
            ports: Some((51820, 51820)),
            remote: Remote::Cidr(format!("{ip}/32").parse().unwrap()),
            description: "WireGuard from bielefeld-master".into(),
        }
    }

    #[test]
    fn parses_nft_listings() {
        let text = "table bridge hg_portsec {\n\tset aap_p_5 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/24,\n\t\t\t     10.10.0.0/24 }\n\t}\n\n\tset aap_p_6 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n\n\tchain p_5 {\n\t\tip saddr @aap_p_5 counter packets 12 bytes 1008 accept comment \"allowed-address pair\"\n\t\tcounter packets 3 bytes 252 drop comment \"ip spoof\"\n\t}\n}\n";
        assert_eq!(
            set_elements(text, "aap_p_5").unwrap(),
            vec![
                "10.0.0.0/24".parse::<Ipv4Net>().unwrap(),
                "10.10.0.0/24".parse().unwrap()
            ]
        );
        assert_eq!(set_elements(text, "aap_p_6").unwrap(), Vec::new());
        assert_eq!(set_elements(text, "aap_p_7"), None);
        let chain = chain_lines(text, "p_5").join("\n");
        assert_eq!(counter(&chain, "ip spoof"), Some(3));
        assert_eq!(
            rule_match(&wg_rule("198.51.100.100")).unwrap(),
            "ip saddr 198.51.100.100 udp dport 51820"
        );
    }
}
