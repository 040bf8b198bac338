//! Stage two, the overlay: the tunnel's range, port, keepalive and MTU against the sites'
//! underlays, and that site subnets and the tunnel do not overlap.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::addr;
use crate::diag::{Diagnostic, Pos};
use crate::raw::{self, NumberOrWord, RawCluster, Sp};

use super::{
    DEFAULT_UNDERLAY_MTU, MIN_TUNNEL_MTU, Site, Tunnel, Validator, WG_OVERHEAD, WG_OVERHEAD_IPV4,
};

/// The shortest `tunnel.rotate_every`: ten minutes.
const MIN_ROTATE_EVERY: u64 = 600;

/// Seconds of `7d`, `12h`, `30m`, `45s` or `3600`.
fn duration_s(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let factor = match unit {
        'd' => 86_400,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    number.trim().parse::<u64>().ok()?.checked_mul(factor)
}

/// The seed's overlay range.
fn default_tunnel_cidr() -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 24)
}

impl Validator<'_> {
    pub(super) fn tunnel(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
    ) -> Option<Tunnel> {
        let t = &raw.tunnel;
        let cidr = self.tunnel_cidr(t, sites.len() as u64);
        let port = match &t.port {
            None => Some(51820),
            Some(p) => self.port(p, "tunnel.port".into()),
        };
        let keepalive = match &t.keepalive {
            None => Some(25),
            Some(k) => match u16::try_from(k.value) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.error(
                        k.pos,
                        "tunnel.keepalive",
                        format!("keepalive {} is out of range", k.value),
                        "use seconds from 0 (off) to 65535; 25 suits NAT and stateful firewalls",
                    );
                    None
                }
            },
        };
        // The tunnel must fit the smallest underlay among the sites.
        let underlay = sites
            .iter()
            .filter_map(|(_, s)| s.as_ref().map(|s| s.underlay_mtu))
            .min()
            .unwrap_or(DEFAULT_UNDERLAY_MTU);
        let mtu = match &t.mtu {
            None => Some(underlay - WG_OVERHEAD),
            Some(Sp {
                value: NumberOrWord::Word(w),
                ..
            }) if w == "auto" => Some(underlay - WG_OVERHEAD),
            Some(Sp {
                value: NumberOrWord::Word(w),
                pos,
            }) => {
                self.error(
                    *pos,
                    "tunnel.mtu",
                    format!("`{w}` is not an MTU"),
                    "use `auto` or a number such as 1370",
                );
                None
            }
            Some(Sp {
                value: NumberOrWord::Number(n),
                pos,
            }) => self.tunnel_mtu(*n, *pos, underlay),
        };
        Some(Tunnel {
            cidr: cidr?,
            port: port?,
            mtu: mtu?,
            keepalive: keepalive?,
            preshared_keys: t.preshared_keys.as_ref().is_none_or(|p| p.value),
            rotate_every_s: self.rotate_every(t)?,
        })
    }

    /// `tunnel.rotate_every`: `7d`, `12h`, `30m`, or seconds; at least [`MIN_ROTATE_EVERY`].
    /// `Some(None)`: not set; `None`: an error was reported.
    fn rotate_every(&mut self, t: &raw::RawTunnel) -> Option<Option<u64>> {
        let Some(every) = &t.rotate_every else {
            return Some(None);
        };
        match duration_s(&every.value) {
            Some(s) if s >= MIN_ROTATE_EVERY => Some(Some(s)),
            Some(_) => {
                self.error(
                    every.pos,
                    "tunnel.rotate_every",
                    format!("`{}` is too often", every.value),
                    "rotate no more often than every 10 minutes (`10m`); a week (`7d`) is usual",
                );
                None
            }
            None => {
                self.error(
                    every.pos,
                    "tunnel.rotate_every",
                    format!("`{}` is not a duration", every.value),
                    "use a number with `d`, `h`, `m` or `s`, such as `7d`",
                );
                None
            }
        }
    }

    /// The tunnel's range (the seed's when not given), with room for a gateway per site.
    fn tunnel_cidr(&mut self, t: &raw::RawTunnel, sites: u64) -> Option<Ipv4Net> {
        let cidr = match &t.cidr {
            Some(c) => self.cidr(c, "tunnel.cidr".into()),
            None => Some(default_tunnel_cidr()),
        };
        if let Some(net) = cidr {
            let capacity = addr::tunnel_capacity(net);
            if sites > capacity {
                self.error(
                    t.cidr.as_ref().map(|c| c.pos).unwrap_or(t.pos),
                    "tunnel.cidr",
                    format!(
                        "{net} has room for {capacity} gateways, but the cluster has {sites} sites"
                    ),
                    "use a larger tunnel range; a /24 holds 254 sites",
                );
            }
        }
        cidr
    }

    /// A tunnel MTU given as a number: at least [`MIN_TUNNEL_MTU`] and within the smallest
    /// underlay less WireGuard's IPv4 overhead (a warning when only IPv4 endpoints fit).
    fn tunnel_mtu(&mut self, n: u64, pos: Pos, underlay: u16) -> Option<u16> {
        let n16 = u16::try_from(n).unwrap_or(u16::MAX);
        if n16 < MIN_TUNNEL_MTU {
            self.error(
                pos,
                "tunnel.mtu",
                format!("MTU {n} is below {MIN_TUNNEL_MTU}"),
                format!(
                    "IPv6 and many tools need at least {MIN_TUNNEL_MTU}; `auto` gives {}",
                    underlay - WG_OVERHEAD
                ),
            );
            return None;
        }
        if u32::from(n16) + u32::from(WG_OVERHEAD_IPV4) > u32::from(underlay) {
            self.error(
                pos,
                "tunnel.mtu",
                format!(
                    "MTU {n} does not fit the underlay MTU {underlay}: WireGuard adds 60 to 80 bytes"
                ),
                format!(
                    "use `auto` ({}) or at most {}",
                    underlay - WG_OVERHEAD,
                    underlay - WG_OVERHEAD_IPV4
                ),
            );
            return None;
        }
        if n16 + WG_OVERHEAD > underlay {
            self.diags.push(
                Diagnostic::warning(
                    pos,
                    "tunnel.mtu",
                    format!("MTU {n} fits the underlay {underlay} only over IPv4"),
                )
                .with_help(format!(
                    "`auto` ({}) also works over IPv6 endpoints",
                    underlay - WG_OVERHEAD
                )),
            );
        }
        Some(n16)
    }

    /// Site subnets and the tunnel must be disjoint: each is routed to exactly one place.
    pub(super) fn overlaps(&mut self, raw: &RawCluster, sites: &[(&raw::RawSite, Option<Site>)]) {
        let mut ranges: Vec<(String, Pos, Ipv4Net)> = Vec::new();
        for (i, (rs, _)) in sites.iter().enumerate() {
            if let Some(c) = &rs.subnet
                && let Ok(net) = c.value.parse::<Ipv4Net>()
            {
                ranges.push((format!("sites[{i}].subnet"), c.pos, net.trunc()));
            }
        }
        let tunnel = match &raw.tunnel.cidr {
            Some(c) => c
                .value
                .parse::<Ipv4Net>()
                .ok()
                .map(|net| (c.pos, net.trunc())),
            None => None,
        };
        if let Some((pos, net)) = tunnel {
            ranges.push(("tunnel.cidr".into(), pos, net));
        }
        for (j, (path, pos, net)) in ranges.iter().enumerate() {
            if let Some((other, opos, onet)) = ranges[..j]
                .iter()
                .find(|(_, _, o)| o.contains(net) || net.contains(o))
            {
                self.error(
                    *pos,
                    path.clone(),
                    format!("{net} overlaps {other} ({onet}, line {})", opos.line),
                    "every site and the tunnel need their own, non-overlapping range",
                );
            }
        }
        // The default tunnel range was not written down: point at the site that collides with it.
        if raw.tunnel.cidr.is_none() {
            let default = default_tunnel_cidr();
            for (path, pos, net) in &ranges {
                if net.contains(&default) || default.contains(net) {
                    self.error(
                        *pos,
                        path.clone(),
                        format!("{net} overlaps the default tunnel range {default}"),
                        "set `tunnel.cidr` to a free range, e.g. `tunnel: { cidr: 172.16.0.0/24 }`",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::duration_s;

    #[test]
    fn durations_in_days_hours_minutes_or_seconds() {
        assert_eq!(duration_s("7d"), Some(7 * 86_400));
        assert_eq!(duration_s("12h"), Some(12 * 3600));
        assert_eq!(duration_s("30m"), Some(1800));
        assert_eq!(duration_s("45s"), Some(45));
        assert_eq!(duration_s("3600"), Some(3600));
        for bad in [
            "",
            "d",
            "7w",
            "weekly",
            "-1d",
            "1.5d",
            "99999999999999999999d",
        ] {
            assert_eq!(duration_s(bad), None, "{bad}");
        }
    }
}
