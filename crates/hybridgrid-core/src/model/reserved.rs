//! Stage two, across sites: address ranges that clouds and hosts reserve, and node names that two
//! sites would both produce.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::addr;
use crate::diag::{Diagnostic, Pos};
use crate::raw::{self, RawCluster};

use super::{Provider, Site, Tunnel, Validator};

/// Ranges no site or tunnel may use, with why.
const RESERVED: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local (169.254.0.0/16, which holds the cloud's metadata service 169.254.169.254)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Validator<'_> {
    /// Site subnets and the tunnel range outside reserved ranges; on the local provider also
    /// outside its emulated internet (a warning for other providers: the file would not run
    /// on `local`).
    pub(super) fn reserved_ranges(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
        tunnel: Option<&Tunnel>,
        provider: Option<Provider>,
    ) {
        let mut ranges: Vec<(Ipv4Net, Pos, String, &str)> = sites
            .iter()
            .enumerate()
            .filter_map(|(i, (r, s))| {
                let s = s.as_ref()?;
                let pos = r.subnet.as_ref().map_or(r.pos, |c| c.pos);
                Some((s.subnet, pos, format!("sites[{i}].subnet"), "site subnet"))
            })
            .collect();
        if let Some(t) = tunnel {
            let pos = raw.tunnel.cidr.as_ref().map_or(raw.tunnel.pos, |c| c.pos);
            ranges.push((t.cidr, pos, "tunnel.cidr".into(), "tunnel range"));
        }
        for (net, pos, path, what) in ranges {
            for (base, len, why) in RESERVED {
                let Ok(reserved) = Ipv4Net::new(base, len) else {
                    continue;
                };
                if overlap(net, reserved) {
                    self.error(
                        pos,
                        path.clone(),
                        format!("{net} is in a range hosts and clouds reserve: {why}"),
                        format!("use a private range for the {what}: 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
                    );
                }
            }
            if overlap(net, addr::LOCAL_INTERNET) {
                let message = format!(
                    "{net} overlaps {}, the local provider's emulated internet (its routers' and floating IPs)",
                    addr::LOCAL_INTERNET
                );
                if provider == Some(Provider::Local) {
                    self.error(
                        pos,
                        path,
                        message,
                        format!("use another range for the {what}"),
                    );
                } else {
                    self.diags
                        .push(Diagnostic::warning(pos, path, message).with_help(
                        "fine on real clouds; the same file would not run with `provider: local`",
                    ));
                }
            }
        }
    }

    /// Node names are `<site>-<group>-<n>`: two sites must not produce the same one (site `a`
    /// with group `b-c` and site `a-b` with group `c` both give `a-b-c-1`).
    pub(super) fn node_names(&mut self, sites: &[(&raw::RawSite, Option<Site>)]) {
        let mut first: BTreeMap<String, (usize, usize, u32)> = BTreeMap::new();
        for (i, (r, s)) in sites.iter().enumerate() {
            let Some(s) = s else { continue };
            for (j, g) in s.workers.iter().enumerate() {
                let prefix = format!("{}-{}", s.name, g.name);
                match first.get(&prefix) {
                    Some(&(fi, fj, fcount)) if fi != i => {
                        let shared = fcount.min(g.count);
                        if shared == 0 {
                            continue;
                        }
                        let pos = r
                            .workers
                            .get(j)
                            .and_then(|w| w.name.as_ref().map(|n| n.pos))
                            .or_else(|| r.workers.get(j).map(|w| w.pos))
                            .unwrap_or(r.pos);
                        self.error(
                            pos,
                            format!("sites[{i}].workers[{j}].name"),
                            format!(
                                "`<site>-<group>` is `{prefix}` here and in sites[{fi}].workers[{fj}]: both sites would have a node `{prefix}-1`{}",
                                if shared > 1 { format!(" (and {} more)", shared - 1) } else { String::new() }
                            ),
                            "rename the group or the site so that `<site>-<group>` differs",
                        );
                    }
                    Some(_) => {}
                    None => {
                        first.insert(prefix, (i, j, g.count));
                    }
                }
            }
        }
    }
}
