//! `status` as text: the node table, tunnels, the reachability matrix.

use std::fmt::Write as _;

use hybridgrid_engine::StatusReport;

/// `512 B`, `3.0 KiB`, `1.5 GiB`: byte counts as every command shows them.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn status_text(r: &StatusReport) -> String {
    let mut s = String::new();
    node_table(&mut s, r);
    if !r.tunnels.is_empty() {
        let _ = writeln!(s, "tunnels:");
        for t in &r.tunnels {
            let hs = t.handshake_age_s.map_or_else(
                || "no handshake".to_owned(),
                |a| format!("handshake {a}s ago"),
            );
            let _ = writeln!(
                s,
                "  {} → {}: {hs}, rx {}, tx {}, endpoint {}",
                t.node,
                t.peer,
                bytes(t.rx_bytes),
                bytes(t.tx_bytes),
                t.endpoint.as_deref().unwrap_or("-")
            );
        }
    }
    key_ages(&mut s, r);
    let n = r.nodes.len();
    let all_pairs = r.reachability.len() == n * n.saturating_sub(1);
    let matrix = !r.reachability.is_empty() && all_pairs && n <= 30;
    if matrix {
        reachability_matrix(&mut s, r);
    } else if !r.reachability.is_empty() {
        let failed: Vec<_> = r.reachability.iter().filter(|x| !x.ok).collect();
        let _ = writeln!(
            s,
            "reachability: {} of {} probes answered{}",
            r.reachability.len() - failed.len(),
            r.reachability.len(),
            if all_pairs {
                " (every pair)"
            } else {
                " (every node to its relay, every site to every other)"
            }
        );
        for x in failed {
            let _ = writeln!(s, "  ✗ {} → {}", x.from, x.to);
        }
    }
    s
}

/// `keys: wireguard 3d (oldest), preshared 3d, munge 12d`: what `rotate` renews, by age.
fn key_ages(s: &mut String, r: &StatusReport) {
    let oldest_relay_key = r.tunnels.iter().filter_map(|t| t.key_age_s).max();
    let parts: Vec<String> = [
        ("wireguard", oldest_relay_key, " (oldest)"),
        ("preshared", r.keys.preshared_s, ""),
        ("munge", r.keys.munge_s, ""),
    ]
    .into_iter()
    .filter_map(|(name, age, note)| Some(format!("{name} {}{note}", age_text(age?))))
    .collect();
    if !parts.is_empty() {
        let due = match (r.keys.due, r.keys.rotate_every_s) {
            (true, Some(every)) => format!(
                "; due (tunnel.rotate_every {}): run `hybridgrid rotate`",
                age_text(every)
            ),
            _ => String::new(),
        };
        let _ = writeln!(s, "keys: {} old{due}", parts.join(", "));
    }
}

/// `45s`, `12m`, `5h`, `3d`.
pub fn age_text(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The cluster's line and a line per node.
fn node_table(s: &mut String, r: &StatusReport) {
    let _ = writeln!(s, "cluster {}", r.cluster);
    let _ = writeln!(
        s,
        "  {:<24} {:<12} {:<8} {:<15} {:<12} {:<16} {:<7} slurm",
        "node", "site", "role", "lan", "tunnel", "public", "state"
    );
    for n in &r.nodes {
        let opt =
            |ip: Option<std::net::Ipv4Addr>| ip.map_or_else(|| "-".to_owned(), |i| i.to_string());
        let _ = writeln!(
            s,
            "  {:<24} {:<12} {:<8} {:<15} {:<12} {:<16} {:<7} {}",
            n.name,
            n.site,
            n.role.as_str(),
            n.lan_ip.to_string(),
            opt(n.tunnel_ip),
            opt(n.public_ip),
            n.state_word(),
            n.slurm.as_deref().unwrap_or("-")
        );
    }
}

/// Every pair probed, as a matrix: ping from row to column.
fn reachability_matrix(s: &mut String, r: &StatusReport) {
    let _ = writeln!(s, "reachability (ping from row to column):");
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4);
    let _ = write!(s, "  {:w$}", "");
    for (i, _) in names.iter().enumerate() {
        let _ = write!(s, " {:>3}", i + 1);
    }
    s.push('\n');
    for (i, from) in names.iter().enumerate() {
        let _ = write!(s, "  {from:w$}");
        for to in &names {
            let cell = if from == to {
                "  ·"
            } else {
                match r
                    .reachability
                    .iter()
                    .find(|x| x.from == *from && x.to == *to)
                {
                    Some(x) if x.ok => "  ✓",
                    Some(_) => "  ✗",
                    None => "  ?",
                }
            };
            s.push_str(cell);
        }
        let _ = writeln!(s, "   ({})", i + 1);
    }
}
