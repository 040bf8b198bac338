//! `wan:`: the WAN conditions the local provider emulates on what leaves each site — latency,
//! jitter, loss and a bandwidth cap. The top-level `wan` applies to every site; a site's own
//! `wan` replaces the keys it gives. Between two sites a packet meets its sender's conditions
//! once: a ping between sites with `latency: 50ms` takes 100 ms.

use serde::{Deserialize, Serialize};

use super::{Provider, Validator};
use crate::diag::Diagnostic;
use crate::raw::{NumberOrWord, RawCluster, RawSite, RawWan, Sp};

/// The longest latency or jitter accepted (ms).
const MAX_DELAY_MS: u64 = 10_000;
/// The smallest bandwidth cap accepted (kbit/s).
const MIN_BANDWIDTH_KBIT: u64 = 64;

/// What a site's outgoing WAN traffic meets.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Wan {
    pub latency_ms: u32,
    /// Each packet's delay varies uniformly by up to this much (never below 0; order is kept).
    pub jitter_ms: u32,
    /// Packets lost, in hundredths of a percent (5 % is 500).
    pub loss_bp: u32,
    /// kbit/s; `None`: no cap.
    pub bandwidth_kbit: Option<u64>,
}

impl Wan {
    /// `50 ms ± 5 ms, 1 % loss, 100 Mbit/s`.
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.jitter_ms > 0 {
            format!("{} ms ± {} ms", self.latency_ms, self.jitter_ms)
        } else {
            format!("{} ms", self.latency_ms)
        }];
        if self.loss_bp > 0 {
            let pct = f64::from(self.loss_bp) / 100.0;
            parts.push(format!("{pct} % loss"));
        }
        if let Some(k) = self.bandwidth_kbit {
            parts.push(if k % 1000 == 0 {
                format!("{} Mbit/s", k / 1000)
            } else {
                format!("{k} kbit/s")
            });
        }
        parts.join(", ")
    }
}

/// The keys one `wan:` block gives, validated.
#[derive(Debug, Clone, Copy, Default)]
struct Given {
    latency_ms: Option<u32>,
    jitter_ms: Option<u32>,
    loss_bp: Option<u32>,
    bandwidth_kbit: Option<u64>,
}

impl Given {
    fn over(self, base: Given) -> Given {
        Given {
            latency_ms: self.latency_ms.or(base.latency_ms),
            jitter_ms: self.jitter_ms.or(base.jitter_ms),
            loss_bp: self.loss_bp.or(base.loss_bp),
            bandwidth_kbit: self.bandwidth_kbit.or(base.bandwidth_kbit),
        }
    }
}

/// `50ms`, `0.2s`, `50` (ms) → ms.
fn delay_ms(v: &NumberOrWord) -> Option<u64> {
    match v {
        NumberOrWord::Number(n) => Some(*n),
        NumberOrWord::Word(w) => {
            let w = w.trim();
            if let Some(ms) = w.strip_suffix("ms") {
                ms.trim().parse::<u64>().ok()
            } else {
                let s: f64 = w.strip_suffix('s')?.trim().parse().ok()?;
                (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
            }
        }
    }
}

/// `5%`, `0.5%`, `5` (percent) → hundredths of a percent.
fn loss_bp(v: &NumberOrWord) -> Option<u64> {
    let pct: f64 = match v {
        NumberOrWord::Number(n) => *n as f64,
        NumberOrWord::Word(w) => w.trim().trim_end_matches('%').trim().parse().ok()?,
    };
    (pct.is_finite() && (0.0..=100.0).contains(&pct)).then(|| (pct * 100.0).round() as u64)
}

/// `100mbit`, `1gbit`, `500kbit`, `100` (Mbit/s) → kbit/s.
fn bandwidth_kbit(v: &NumberOrWord) -> Option<u64> {
    match v {
        NumberOrWord::Number(n) => n.checked_mul(1000),
        NumberOrWord::Word(w) => {
            let w = w.trim().to_ascii_lowercase();
            let w = w
                .strip_suffix("/s")
                .or_else(|| w.strip_suffix("ps"))
                .unwrap_or(&w);
            let (num, unit) = w.split_at(w.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = num.trim().parse().ok()?;
            let k = match unit {
                "kbit" => n,
                "mbit" => n * 1e3,
                "gbit" => n * 1e6,
                _ => return None,
            };
            (k.is_finite() && k >= 0.0).then(|| k.round() as u64)
        }
    }
}

impl Validator<'_> {
    fn wan_key(
        &mut self,
        v: Option<&Sp<NumberOrWord>>,
        path: &str,
        key: &str,
        parse: fn(&NumberOrWord) -> Option<u64>,
        range: std::ops::RangeInclusive<u64>,
        help: &str,
    ) -> Result<Option<u64>, ()> {
        let Some(v) = v else { return Ok(None) };
        match parse(&v.value) {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => {
                let shown = match &v.value {
                    NumberOrWord::Number(n) => n.to_string(),
                    NumberOrWord::Word(w) => w.clone(),
                };
                self.error(
                    v.pos,
                    format!("{path}.{key}"),
                    format!("`{shown}` is not a {key} hybridgrid can emulate"),
                    help,
                );
                Err(())
            }
        }
    }

    fn wan_given(&mut self, w: &RawWan, path: &str) -> Option<Given> {
        let latency = self.wan_key(
            w.latency.as_ref(),
            path,
            "latency",
            delay_ms,
            0..=MAX_DELAY_MS,
            "write a one-way delay such as `50ms` or `0.1s` (at most 10 s)",
        );
        let jitter = self.wan_key(
            w.jitter.as_ref(),
            path,
            "jitter",
            delay_ms,
            0..=MAX_DELAY_MS,
            "write a delay such as `5ms` (at most 10 s)",
        );
        let loss = self.wan_key(
            w.loss.as_ref(),
            path,
            "loss",
            loss_bp,
            0..=10_000,
            "write a share of packets from `0%` to `100%`, such as `1%` or `0.5%`",
        );
        let bandwidth = self.wan_key(
            w.bandwidth.as_ref(),
            path,
            "bandwidth",
            bandwidth_kbit,
            MIN_BANDWIDTH_KBIT..=u64::from(u32::MAX),
            "write a rate such as `100mbit`, `1gbit` or `512kbit` (at least 64 kbit)",
        );
        Some(Given {
            latency_ms: latency.ok()?.map(|v| v as u32),
            jitter_ms: jitter.ok()?.map(|v| v as u32),
            loss_bp: loss.ok()?.map(|v| v as u32),
            bandwidth_kbit: bandwidth.ok()?,
        })
    }

    /// The cluster's `wan`, validated once for every site (`None`: it has errors).
    pub(super) fn cluster_wan(
        &mut self,
        raw: &RawCluster,
        provider: Option<Provider>,
    ) -> Option<Option<RawWanBase>> {
        let Some(w) = &raw.wan else {
            return Some(None);
        };
        if provider == Some(Provider::OpenStack) {
            self.openstack_wan(w, "wan");
            return Some(None);
        }
        self.wan_given(w, "wan").map(|g| Some(RawWanBase(g)))
    }

    /// What leaves the site meets: the cluster's `wan` with the site's keys over it. `Ok(None)`:
    /// no emulation; `Err`: the site's `wan` has errors.
    pub(super) fn site_wan(
        &mut self,
        site: &RawSite,
        path: &str,
        base: Option<RawWanBase>,
        provider: Option<Provider>,
    ) -> Result<Option<Wan>, ()> {
        let own = match &site.wan {
            None => None,
            Some(w) if provider == Some(Provider::OpenStack) => {
                self.openstack_wan(w, &format!("{path}.wan"));
                None
            }
            Some(w) => Some(self.wan_given(w, &format!("{path}.wan")).ok_or(())?),
        };
        let given = match (own, base) {
            (None, None) => return Ok(None),
            (Some(o), Some(b)) => o.over(b.0),
            (Some(o), None) => o,
            (None, Some(b)) => b.0,
        };
        Ok(Some(Wan {
            latency_ms: given.latency_ms.unwrap_or(0),
            jitter_ms: given.jitter_ms.unwrap_or(0),
            loss_bp: given.loss_bp.unwrap_or(0),
            bandwidth_kbit: given.bandwidth_kbit,
        }))
    }

    fn openstack_wan(&mut self, w: &RawWan, path: &str) {
        self.diags.push(
            Diagnostic::warning(
                w.pos,
                path,
                "`wan` is emulated by the local provider only; it is ignored here",
            )
            .with_help("an openstack cluster runs over the real network between its clouds"),
        );
    }
}

/// The top-level `wan`, validated.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawWanBase(Given);

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> NumberOrWord {
        NumberOrWord::Word(s.into())
    }

    #[test]
    fn units_of_delay_loss_and_bandwidth() {
        assert_eq!(delay_ms(&w("50ms")), Some(50));
        assert_eq!(delay_ms(&w("0.1s")), Some(100));
        assert_eq!(delay_ms(&NumberOrWord::Number(7)), Some(7));
        assert_eq!(delay_ms(&w("fast")), None);
        assert_eq!(loss_bp(&w("5%")), Some(500));
        assert_eq!(loss_bp(&w("0.5 %")), Some(50));
        assert_eq!(loss_bp(&w("120%")), None);
        assert_eq!(bandwidth_kbit(&w("100mbit")), Some(100_000));
        assert_eq!(bandwidth_kbit(&w("1Gbit")), Some(1_000_000));
        assert_eq!(bandwidth_kbit(&w("512kbit/s")), Some(512));
        assert_eq!(bandwidth_kbit(&NumberOrWord::Number(10)), Some(10_000));
        assert_eq!(bandwidth_kbit(&w("10 furlongs")), None);
    }

    #[test]
    fn described_in_plain_units() {
        let wan = Wan {
            latency_ms: 50,
            jitter_ms: 5,
            loss_bp: 150,
            bandwidth_kbit: Some(100_000),
        };
        assert_eq!(wan.describe(), "50 ms ± 5 ms, 1.5 % loss, 100 Mbit/s");
    }
}
