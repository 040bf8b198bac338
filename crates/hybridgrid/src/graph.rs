//! `hybridgrid graph`: the cluster as a picture. Sites are boxes with their subnets, relays and
//! workers inside; tunnels between the relays are edges. With a running cluster (a status
//! report), edges carry the handshake age and bytes, and broken ones are red.
//!
//! One model ([`Graph`], also the `--json` document, `format_version` 1) rendered to SVG (opens in
//! any browser: no scripts, no external fonts or images) or Graphviz DOT. Pure: no I/O.

use std::fmt::Write as _;

use hybridgrid_core::plan::Plan;
use hybridgrid_engine::{HANDSHAKE_STALE_S, PairState, StatusReport};
use serde::Serialize;

/// Workers shown per site box; the rest are summed up in one line.
const WORKERS_SHOWN: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub format_version: u32,
    pub cluster: String,
    /// Whether tunnel states come from the running cluster (a status report).
    pub observed: bool,
    pub sites: Vec<GraphSite>,
    pub tunnels: Vec<GraphTunnel>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphSite {
    pub name: String,
    pub subnet: String,
    pub master: bool,
    pub nodes: Vec<GraphNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphNode {
    pub name: String,
    pub role: String,
    pub lan_ip: String,
    /// Relays only.
    pub tunnel_ip: Option<String>,
    /// From the status report; `None` when not observed.
    pub up: Option<bool>,
    /// A relay of a pair: `active` or `standby`, as the status report found it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// A handshake within [`HANDSHAKE_STALE_S`].
    Up,
    /// Observed, and no recent handshake (or no such peer on the relay).
    Down,
    /// Not observed: the cluster is not running, or its state could not be read.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphTunnel {
    /// Relay nodes, in plan order.
    pub a: String,
    pub b: String,
    pub state: TunnelState,
    /// The older of both ends' latest handshakes, seconds ago; `None` if an end has none.
    pub handshake_age_s: Option<u64>,
    /// As counted on `a`'s end.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The graph of `plan`, with node states from `status` when the cluster runs, and tunnel states
/// too when `tunnels_observed` (the provider read the relays' WireGuard devices: local always,
/// openstack over its node channel).
pub fn build(plan: &Plan, status: Option<&StatusReport>, tunnels_observed: bool) -> Graph {
    let seen = |node: &str| status.and_then(|s| s.nodes.iter().find(|n| n.name == node));
    let up_of = |node: &str| seen(node).map(|n| n.up);
    let ends: Vec<End> = plan
        .sites
        .iter()
        .map(|s| site_end(plan, s, status))
        .collect();
    let sites = plan
        .sites
        .iter()
        .map(|s| {
            let mut nodes: Vec<GraphNode> = plan
                .nodes
                .iter()
                .filter(|n| n.site == s.name)
                .map(|n| GraphNode {
                    name: n.name.clone(),
                    role: n.role.as_str().to_owned(),
                    lan_ip: n.lan_ip.to_string(),
                    tunnel_ip: n.tunnel_ip.map(|ip| ip.to_string()),
                    up: up_of(&n.name),
                    pair: seen(&n.name).and_then(|n| n.pair),
                })
                .collect();
            // The relay where the tunnels attach first (of a pair: the active one).
            let end = ends.iter().find(|e| e.site == s.name);
            nodes.sort_by_key(|n| Some(n.name.as_str()) != end.map(|e| e.node.as_str()));
            GraphSite {
                name: s.name.clone(),
                subnet: s.subnet.to_string(),
                master: s.master,
                nodes,
            }
        })
        .collect();
    let mut tunnels = Vec::new();
    for (i, a) in ends.iter().enumerate() {
        for b in &ends[i + 1..] {
            tunnels.push(tunnel(a, b, status.filter(|_| tunnels_observed)));
        }
    }
    Graph {
        format_version: 1,
        cluster: plan.cluster.clone(),
        observed: status.is_some(),
        sites,
        tunnels,
    }
}

/// Where a site's tunnels attach: its relay (of a pair the active one as `status` found it,
/// else the first), and the name the other relays know the site's end by.
struct End {
    site: String,
    node: String,
    mesh: String,
}

fn site_end(
    plan: &Plan,
    site: &hybridgrid_core::plan::SitePlan,
    status: Option<&StatusReport>,
) -> End {
    let active = site.pair.as_ref().and_then(|p| {
        p.relays.iter().find(|r| {
            status.is_some_and(|s| {
                s.nodes
                    .iter()
                    .any(|n| &n.name == *r && n.pair == Some(PairState::Active))
            })
        })
    });
    let node = active.unwrap_or(&site.relay).clone();
    let mesh = plan
        .node(&node)
        .map_or(node.clone(), |n| n.mesh_name().to_owned());
    End {
        site: site.name.clone(),
        node,
        mesh,
    }
}

fn tunnel(a: &End, b: &End, status: Option<&StatusReport>) -> GraphTunnel {
    let Some(status) = status else {
        return GraphTunnel {
            a: a.node.clone(),
            b: b.node.clone(),
            state: TunnelState::Unknown,
            handshake_age_s: None,
            rx_bytes: 0,
            tx_bytes: 0,
        };
    };
    let end = |x: &End, y: &End| {
        status
            .tunnels
            .iter()
            .find(|t| t.node == x.node && t.peer == y.mesh)
    };
    let (ab, ba) = (end(a, b), end(b, a));
    // Both ends must have shaken hands recently: a responder whose answers are dropped (a
    // missing rule on the other side) still shows a fresh handshake of its own.
    let ends: Vec<_> = [ab, ba].into_iter().flatten().collect();
    let age = if ends.is_empty() || ends.iter().any(|t| t.handshake_age_s.is_none()) {
        None
    } else {
        ends.iter().filter_map(|t| t.handshake_age_s).max()
    };
    let state = match age {
        Some(s) if s <= HANDSHAKE_STALE_S => TunnelState::Up,
        _ => TunnelState::Down,
    };
    GraphTunnel {
        a: a.node.clone(),
        b: b.node.clone(),
        state,
        handshake_age_s: age,
        rx_bytes: ab.map(|t| t.rx_bytes).unwrap_or(0),
        tx_bytes: ab.map(|t| t.tx_bytes).unwrap_or(0),
    }
}

/// Fill and stroke of site boxes, in site order (repeats after 8).
pub const SITE_FILLS: [&str; 8] = [
    "#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#e0e7ff", "#ccfbf1", "#fee2e2", "#f3e8ff",
];
const SITE_STROKES: [&str; 8] = [
    "#2563eb", "#16a34a", "#d97706", "#db2777", "#4f46e5", "#0d9488", "#dc2626", "#9333ea",
];
const BOX_W: f64 = 290.0;
const ROW_H: f64 = 22.0;

/// The label of a tunnel edge.
pub fn tunnel_label(t: &GraphTunnel) -> String {
    match (t.state, t.handshake_age_s) {
        (TunnelState::Unknown, _) => "not observed".to_owned(),
        (_, None) => "no handshake".to_owned(),
        (_, Some(age)) => format!(
            "handshake {age} s ago · ↓{} ↑{}",
            crate::status_text::bytes(t.rx_bytes),
            crate::status_text::bytes(t.tx_bytes)
        ),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn box_height(site: &GraphSite) -> f64 {
    let shown = site.nodes.len().min(WORKERS_SHOWN + 1);
    let more = usize::from(site.nodes.len() > shown);
    44.0 + ROW_H * (shown + more) as f64 + 8.0
}

/// Site boxes around a circle (chords between relays then pass outside the other boxes for the
/// usual handful of sites); returns each box's top-left corner, and the canvas size.
fn positions(g: &Graph) -> (Vec<(f64, f64)>, f64, f64) {
    let n = g.sites.len().max(1);
    let tallest = g.sites.iter().map(box_height).fold(0.0, f64::max);
    let radius = if n == 1 {
        0.0
    } else {
        (n as f64 * (BOX_W + 60.0) / std::f64::consts::TAU).max(BOX_W)
    };
    let margin = 30.0;
    let (cx, cy) = (margin + radius + BOX_W / 2.0, 60.0 + radius + tallest / 2.0);
    let pos = (0..n)
        .map(|i| {
            let angle = -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / n as f64;
            (
                cx + radius * angle.cos() - BOX_W / 2.0,
                cy + radius * angle.sin() - tallest / 2.0,
            )
        })
        .collect();
    (
        pos,
        2.0 * (margin + radius) + BOX_W,
        60.0 + 2.0 * radius + tallest + margin + 20.0,
    )
}

/// A standalone SVG document: the title, the tunnels between the relays, the site boxes with
/// their nodes, and the tunnels' labels last, over boxes and lines.
pub fn svg(g: &Graph) -> String {
    let (pos, width, height) = positions(g);
    let mut out = String::new();
    svg_title(&mut out, g, width, height);
    let ends = |t: &GraphTunnel| Some((relay_anchor(g, &pos, &t.a)?, relay_anchor(g, &pos, &t.b)?));
    for t in &g.tunnels {
        if let Some(((x1, y1), (x2, y2))) = ends(t) {
            let (color, dash) = match t.state {
                TunnelState::Up => ("#16a34a", ""),
                TunnelState::Down => ("#dc2626", ""),
                TunnelState::Unknown => ("#9ca3af", r#" stroke-dasharray="6 4""#),
            };
            let _ = writeln!(
                out,
                r#"<line class="tunnel {state:?}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{color}" stroke-width="3"{dash}/>"#,
                state = t.state
            );
        }
    }
    for (i, (s, &(x, y))) in g.sites.iter().zip(&pos).enumerate() {
        site_box(&mut out, i, s, x, y);
    }
    for t in &g.tunnels {
        if let Some(((x1, y1), (x2, y2))) = ends(t) {
            tunnel_label_box(&mut out, t, (x1 + x2) / 2.0, (y1 + y2) / 2.0);
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The document's opening tag, its white background and the cluster's title line.
fn svg_title(out: &mut String, g: &Graph, width: f64, height: f64) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let nodes: usize = g.sites.iter().map(|s| s.nodes.len()).sum();
    let _ = writeln!(
        out,
        r##"<text x="20" y="30" font-size="18" font-weight="bold" fill="#111827">cluster {} — {} sites, {} nodes{}</text>"##,
        esc(&g.cluster),
        g.sites.len(),
        nodes,
        if g.observed { "" } else { " (not observed)" }
    );
}

/// A relay's anchor: the middle of its row, the first in its site's box.
fn relay_anchor(g: &Graph, pos: &[(f64, f64)], relay: &str) -> Option<(f64, f64)> {
    g.sites.iter().zip(pos).find_map(|(s, (x, y))| {
        (s.nodes.first().map(|n| n.name.as_str()) == Some(relay))
            .then_some((x + BOX_W / 2.0, y + 44.0 + ROW_H / 2.0 - 4.0))
    })
}

/// Site `i`'s box at `(x, y)`: its name and subnet, a row per node shown, and how many more.
fn site_box(out: &mut String, i: usize, s: &GraphSite, x: f64, y: f64) {
    let (fill, stroke) = (SITE_FILLS[i % 8], SITE_STROKES[i % 8]);
    let h = box_height(s);
    let _ = writeln!(
        out,
        r#"<g class="site"><rect x="{x:.1}" y="{y:.1}" width="{BOX_W}" height="{h:.1}" rx="10" fill="{fill}" stroke="{stroke}" stroke-width="2"/>"#
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-weight="bold" fill="#111827">{}{}</text><text x="{:.1}" y="{:.1}" fill="#374151">{}</text>"##,
        x + 12.0,
        y + 20.0,
        esc(&s.name),
        if s.master { " (master)" } else { "" },
        x + 12.0,
        y + 36.0,
        esc(&s.subnet)
    );
    let shown = s.nodes.len().min(WORKERS_SHOWN + 1);
    for (r, n) in s.nodes.iter().take(shown).enumerate() {
        node_row(out, n, x, y + 44.0 + ROW_H * r as f64, stroke);
    }
    if s.nodes.len() > shown {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#374151">… and {} more</text>"##,
            x + 12.0,
            y + 44.0 + ROW_H * shown as f64 + 13.0,
            s.nodes.len() - shown
        );
    }
    let _ = writeln!(out, "</g>");
}

/// One node's row at height `ry` of a box at `x`: a dot (up, down, not observed), its name and
/// addresses.
fn node_row(out: &mut String, n: &GraphNode, x: f64, ry: f64, stroke: &str) {
    let dot = match n.up {
        Some(true) => "#16a34a",
        Some(false) => "#dc2626",
        None => "#9ca3af",
    };
    let ip = n
        .tunnel_ip
        .as_ref()
        .map_or(n.lan_ip.clone(), |t| format!("{} · {t}", n.lan_ip));
    let name = match n.pair {
        Some(PairState::Active) => format!("{} (active)", n.name),
        Some(PairState::Standby) => format!("{} (standby)", n.name),
        None => n.name.clone(),
    };
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="4" fill="#ffffff" stroke="{stroke}" stroke-width="1"/><circle cx="{:.1}" cy="{:.1}" r="4" fill="{dot}"/><text x="{:.1}" y="{:.1}" fill="#111827">{}</text><text x="{:.1}" y="{:.1}" font-size="11" fill="#6b7280" text-anchor="end">{}</text>"##,
        x + 8.0,
        ry,
        BOX_W - 16.0,
        ROW_H - 4.0,
        x + 18.0,
        ry + 9.0,
        x + 28.0,
        ry + 13.5,
        esc(&name),
        x + BOX_W - 14.0,
        ry + 13.0,
        esc(&ip)
    );
}

/// A tunnel's label centred at `(mx, my)`, on a white box.
fn tunnel_label_box(out: &mut String, t: &GraphTunnel, mx: f64, my: f64) {
    let label = tunnel_label(t);
    let w = 7.0 * label.chars().count() as f64 + 12.0;
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="18" rx="3" fill="#ffffff" fill-opacity="0.9"/><text x="{mx:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#111827">{}</text>"##,
        mx - w / 2.0,
        my - 12.0,
        my + 1.0,
        esc(&label)
    );
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Graphviz document (`dot -Tsvg`).
pub fn dot(g: &Graph) -> String {
    let mut out = format!(
        "graph {} {{\n  node [shape=box, style=rounded];\n",
        dot_id(&g.cluster)
    );
    for (i, s) in g.sites.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph {} {{\n    label={};\n    style=filled; fillcolor={};",
            dot_id(&format!("cluster_{}", s.name)),
            dot_id(&format!(
                "{}{} {}",
                s.name,
                if s.master { " (master)" } else { "" },
                s.subnet
            )),
            dot_id(SITE_FILLS[i % 8])
        );
        for n in &s.nodes {
            let _ = writeln!(
                out,
                "    {} [label={}];",
                dot_id(&n.name),
                dot_id(&format!("{}\\n{}", n.name, n.lan_ip))
            );
        }
        out.push_str("  }\n");
    }
    for t in &g.tunnels {
        let color = match t.state {
            TunnelState::Up => "green",
            TunnelState::Down => "red",
            TunnelState::Unknown => "gray",
        };
        let _ = writeln!(
            out,
            "  {} -- {} [label={}, color={color}{}];",
            dot_id(&t.a),
            dot_id(&t.b),
            dot_id(&tunnel_label(t)),
            if t.state == TunnelState::Unknown {
                ", style=dashed"
            } else {
                ""
            }
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;
    use hybridgrid_core::model::validate_text;
    use hybridgrid_engine::{NodeStatus, TunnelStatus};

    fn three_sites() -> Plan {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/three-sites.yaml"
        ))
        .unwrap();
        let (c, d) = validate_text(&text);
        hybridgrid_core::reconcile::plan(&c.unwrap_or_else(|| panic!("{d:?}")), &Default::default())
    }

    fn tunnel(node: &str, peer: &str, age: Option<u64>) -> TunnelStatus {
        TunnelStatus {
            node: node.into(),
            peer: peer.into(),
            endpoint: None,
            handshake_age_s: age,
            rx_bytes: 3 * 1024 * 1024,
            tx_bytes: 2048,
            preshared_key: true,
            key_age_s: None,
        }
    }

    #[test]
    fn tunnels_are_up_stale_or_missing_from_the_status() {
        let plan = three_sites();
        let status = StatusReport {
            format_version: 1,
            cluster: "tri".into(),
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeStatus::of(n, true, None))
                .collect(),
            tunnels: vec![
                tunnel("bielefeld-master", "giessen-gw", Some(12)),
                tunnel("giessen-gw", "bielefeld-master", Some(40)),
                tunnel(
                    "bielefeld-master",
                    "heidelberg-gw",
                    Some(HANDSHAKE_STALE_S + 1),
                ),
            ],
            reachability: vec![],
            keys: Default::default(),
        };
        let g = build(&plan, Some(&status), true);
        assert!(
            build(&plan, Some(&status), false)
                .tunnels
                .iter()
                .all(|t| t.state == TunnelState::Unknown),
            "a provider that cannot see the tunnels draws none red"
        );
        let states: Vec<_> = g
            .tunnels
            .iter()
            .map(|t| (t.a.as_str(), t.b.as_str(), t.state))
            .collect();
        assert_eq!(
            states,
            [
                ("bielefeld-master", "giessen-gw", TunnelState::Up),
                ("bielefeld-master", "heidelberg-gw", TunnelState::Down),
                ("giessen-gw", "heidelberg-gw", TunnelState::Down),
            ]
        );
        assert_eq!(
            g.tunnels[0].handshake_age_s,
            Some(40),
            "the staler end counts"
        );
        assert_eq!(
            tunnel_label(&g.tunnels[0]),
            "handshake 40 s ago · ↓3.0 MiB ↑2.0 KiB"
        );
        // One end answers, the other never heard back: down.
        let mut one_sided = status.clone();
        one_sided.tunnels[1].handshake_age_s = None;
        assert_eq!(
            build(&plan, Some(&one_sided), true).tunnels[0].state,
            TunnelState::Down
        );
        assert_eq!(tunnel_label(&g.tunnels[2]), "no handshake");
        let svg = svg(&g);
        assert_eq!(svg.matches(r#"class="site""#).count(), 3);
        assert_eq!(
            svg.matches(r##"stroke="#dc2626" stroke-width="3""##)
                .count(),
            2,
            "two red tunnels"
        );
        assert_eq!(
            svg.matches(r##"stroke="#16a34a" stroke-width="3""##)
                .count(),
            1,
            "one green"
        );
        assert!(
            g.sites.iter().all(|s| s.nodes[0].role != "worker"),
            "relays first"
        );
    }

    #[test]
    fn a_pairs_tunnels_attach_to_its_active_relay_under_the_pairs_name() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/valid/standby-pairs.yaml"
        ))
        .unwrap();
        let (c, d) = validate_text(&text);
        let plan = hybridgrid_core::reconcile::plan(
            &c.unwrap_or_else(|| panic!("{d:?}")),
            &Default::default(),
        );
        let nodes = plan
            .nodes
            .iter()
            .map(|n| {
                let mut s = NodeStatus::of(n, true, None);
                s.pair = n.pair.as_ref().map(|_| match n.name.ends_with("-b") {
                    true => PairState::Active,
                    false => PairState::Standby,
                });
                s
            })
            .collect();
        let status = StatusReport {
            format_version: 1,
            cluster: "pairs".into(),
            nodes,
            tunnels: vec![
                tunnel("bielefeld-gw-b", "giessen-gw", Some(5)),
                tunnel("giessen-gw-b", "bielefeld-gw", Some(7)),
            ],
            reachability: vec![],
            keys: Default::default(),
        };
        let g = build(&plan, Some(&status), true);
        let t = &g.tunnels[0];
        assert_eq!(
            (t.a.as_str(), t.b.as_str(), t.state, t.handshake_age_s),
            ("bielefeld-gw-b", "giessen-gw-b", TunnelState::Up, Some(7))
        );
        let first: Vec<&str> = g.sites.iter().map(|s| s.nodes[0].name.as_str()).collect();
        assert_eq!(first, ["bielefeld-gw-b", "giessen-gw-b", "heidelberg-gw"]);
        assert!(svg(&g).contains("giessen-gw-a (standby)"));
    }

    #[test]
    fn names_are_escaped_and_large_sites_summed_up() {
        let mut g = build(&three_sites(), None, true);
        g.cluster = "a<b&\"c".into();
        let extra = g.sites[1].nodes[1].clone();
        g.sites[1].nodes.extend(std::iter::repeat_n(extra, 20));
        let svg = svg(&g);
        assert!(svg.contains("a&lt;b&amp;&quot;c"), "{svg}");
        assert!(svg.contains("… and 14 more"), "{svg}");
        assert!(dot(&g).starts_with("graph \"a<b&\\\"c\" {"));
    }
}
