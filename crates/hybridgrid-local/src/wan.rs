//! WAN conditions between the emulated sites (`wan:` in the cluster file). This kernel has no
//! netem, so a small userspace link does it: in the cluster's internet namespace the site
//! router's port `r-N` leaves the internet bridge for a bridge of its own, `wl-N`, and the
//! process `hybridgrid wan-link` joins the two bridges through two TAP devices — `wa-N` on the
//! site's side, `wb-N` on the internet's. Frames leaving the site wait `latency ± jitter`, are
//! lost with probability `loss`, and leave no faster than `bandwidth` (a 100 ms buffer, then tail
//! drop, like a router); frames towards the site pass at once (the sending site's link delays
//! them). Frames keep their order: jitter never reorders.
//!
//! The process lives in the internet namespace, so `down` (which removes it) stops it; `observe`
//! reads the conditions from its command line, so a dead link is a `SetWan` change.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridgrid_core::model::Wan;

use crate::names::{self, BRIDGE};
use crate::{LocalError, infra, sh};

/// How long a frame may queue behind the bandwidth cap before it is dropped.
const BUFFER: Duration = Duration::from_millis(100);
/// The largest frame read from a TAP.
const FRAME_MAX: usize = 65_536;

fn site_bridge(index: u32) -> String {
    format!("wl-{index}")
}
fn site_tap(index: u32) -> String {
    format!("wa-{index}")
}
fn inet_tap(index: u32) -> String {
    format!("wb-{index}")
}

/// The `wan-link` processes of the cluster, with the site each serves.
fn links(cluster: &str) -> Vec<(u32, String, String)> {
    infra::netns_pids(&names::ns_inet(cluster))
        .into_iter()
        .filter_map(|pid| {
            let cmd = infra::cmdline(pid);
            let words: Vec<&str> = cmd.split_whitespace().collect();
            if !words.contains(&"wan-link") {
                return None;
            }
            let site = arg(&words, "--site")?.to_owned();
            Some((pid, site, cmd))
        })
        .collect()
}

fn arg<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == key)
        .and_then(|i| words.get(i + 1))
        .copied()
}

/// The conditions the site's link runs with; `None` when no link runs for it or the router's
/// port bypasses it (a router built again sits on the internet bridge).
pub(crate) fn observed(cluster: &str, site: &str, index: u32) -> Option<Wan> {
    let wan = links(cluster)
        .into_iter()
        .find(|(_, s, _)| s == site)
        .and_then(|(_, _, cmd)| parse_args(&cmd))?;
    wired(cluster, index).then_some(wan)
}

/// Whether the router's port and the link's site-side TAP are on the site's own bridge.
fn wired(cluster: &str, index: u32) -> bool {
    let inet = names::ns_inet(cluster);
    let on_bridge = |dev: &str| {
        sh::run("ip", &["-n", &inet, "-o", "link", "show", dev])
            .is_ok_and(|o| o.contains(&format!("master {}", site_bridge(index))))
    };
    on_bridge(&names::inet_port(index)) && on_bridge(&site_tap(index))
}

fn parse_args(cmd: &str) -> Option<Wan> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let num = |k: &str| arg(&words, k).and_then(|v| v.parse::<u64>().ok());
    Some(Wan {
        latency_ms: u32::try_from(num("--latency-ms")?).ok()?,
        jitter_ms: u32::try_from(num("--jitter-ms")?).ok()?,
        loss_bp: u32::try_from(num("--loss-bp")?).ok()?,
        bandwidth_kbit: num("--bandwidth-kbit"),
    })
}

/// The command line of the site's link (after the executable).
fn link_args(cluster: &str, site: &str, index: u32, w: &Wan) -> Vec<String> {
    let mut a = vec![
        "wan-link".to_owned(),
        "--cluster".into(),
        cluster.into(),
        "--site".into(),
        site.into(),
        "--index".into(),
        index.to_string(),
        "--latency-ms".into(),
        w.latency_ms.to_string(),
        "--jitter-ms".into(),
        w.jitter_ms.to_string(),
        "--loss-bp".into(),
        w.loss_bp.to_string(),
    ];
    if let Some(k) = w.bandwidth_kbit {
        a.extend(["--bandwidth-kbit".into(), k.to_string()]);
    }
    // The cluster's prefix, as every process of the cluster carries it.
    a.extend(["--tag".into(), names::ns_inet(cluster)]);
    a
}

/// Makes the site's link as `wan` says: none (the router's port back on the internet bridge),
/// or a `wan-link` process with these conditions (started again when it runs others or died).
pub(crate) fn ensure(
    cluster: &str,
    site: &str,
    index: u32,
    wan: Option<&Wan>,
    exe: &Path,
    state_dir: &Path,
) -> Result<Vec<String>, LocalError> {
    let inet = names::ns_inet(cluster);
    let port = names::inet_port(index);
    let running: Vec<(u32, String, String)> = links(cluster)
        .into_iter()
        .filter(|(_, s, _)| s == site)
        .collect();
    if let Some(w) = wan
        && running.len() == 1
        && parse_args(&running[0].2).as_ref() == Some(w)
        && wired(cluster, index)
    {
        return Ok(Vec::new());
    }
    let pids: Vec<u32> = running.iter().map(|(p, _, _)| *p).collect();
    infra::stop_processes(&pids);
    let bridge = site_bridge(index);
    let Some(w) = wan else {
        sh::ip_batch(Some(&inet), &[format!("link set {port} master {BRIDGE}")])?;
        let _ = sh::run("ip", &["-n", &inet, "link", "del", &bridge]);
        return Ok(vec!["no WAN emulation".into()]);
    };
    if !sh::run("ip", &["-n", &inet, "link", "show", &bridge]).is_ok_and(|o| !o.is_empty()) {
        sh::ip_batch(Some(&inet), &[format!("link add {bridge} type bridge")])?;
    }
    sh::ip_batch(
        Some(&inet),
        &[
            format!("link set {bridge} up"),
            format!("link set {port} master {bridge}"),
        ],
    )?;
    let log = state_dir.join(format!("wan-{site}.log"));
    spawn(site, &inet, exe, &link_args(cluster, site, index, w), &log)?;
    Ok(vec![format!("WAN link {}", w.describe())])
}

fn spawn(
    site: &str,
    inet: &str,
    exe: &Path,
    args: &[String],
    log: &Path,
) -> Result<(), LocalError> {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    let out = std::fs::File::create(log).map_err(LocalError::io(log))?;
    let child = Command::new("ip")
        .args(["netns", "exec", inet])
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| LocalError::Command {
            command: format!("ip netns exec {inet} hybridgrid wan-link"),
            detail: e.to_string(),
        })?;
    let pid = child.id();
    let tap = args
        .iter()
        .position(|a| a == "--index")
        .and_then(|i| args.get(i + 1))
        .and_then(|i| i.parse::<u32>().ok())
        .map(inet_tap)
        .unwrap_or_default();
    // Ready once its internet-side TAP is on the bridge.
    infra::wait_for("the WAN link", Duration::from_secs(10), || {
        if !infra::alive(pid) {
            let why = std::fs::read_to_string(log).unwrap_or_default();
            return Some(Err(LocalError::WanLinkExited {
                site: site.to_owned(),
                log: why.trim().to_owned(),
            }));
        }
        sh::run("ip", &["-n", inet, "-o", "link", "show", &tap])
            .is_ok_and(|o| o.contains(&format!("master {BRIDGE}")))
            .then_some(Ok(()))
    })??;
    drop(child);
    Ok(())
}

/// Frames on their way out of the site, with when each leaves.
type Outbound = VecDeque<(Instant, Vec<u8>)>;

/// A frame's fate on the way out of the site: `None` lost, else when it leaves.
#[derive(Debug)]
struct Shaper {
    wan: Wan,
    rng: u64,
    /// When the link is free again (the bandwidth cap), and the latest departure (order).
    free_at: Instant,
    last_departure: Instant,
}

impl Shaper {
    fn new(wan: Wan, seed: u64, now: Instant) -> Shaper {
        Shaper {
            wan,
            rng: seed | 1,
            free_at: now,
            last_departure: now,
        }
    }

    /// xorshift64*: a uniform number in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn departure(&mut self, now: Instant, bytes: usize) -> Option<Instant> {
        if self.wan.loss_bp > 0 && self.uniform() * 10_000.0 < f64::from(self.wan.loss_bp) {
            return None;
        }
        let jitter = f64::from(self.wan.jitter_ms) * (2.0 * self.uniform() - 1.0);
        let delay_ms = (f64::from(self.wan.latency_ms) + jitter).max(0.0);
        let mut at = (now + Duration::from_secs_f64(delay_ms / 1000.0)).max(self.last_departure);
        if let Some(kbit) = self.wan.bandwidth_kbit {
            let start = self.free_at.max(now);
            if start > now + BUFFER {
                return None;
            }
            let tx = Duration::from_secs_f64(bytes as f64 * 8.0 / (kbit as f64 * 1000.0));
            self.free_at = start + tx;
            at = at.max(self.free_at);
        }
        self.last_departure = at;
        Some(at)
    }
}

/// A TAP device named `name`. The one of a link just stopped may still be going away (the
/// kernel frees it after its last descriptor): tried again for up to 2 s.
fn tap(name: &str) -> Result<tun::Device, LocalError> {
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name).layer(tun::Layer::L2).mtu(1500).up();
    let t = Instant::now();
    loop {
        match tun::create(&cfg) {
            Ok(d) => return Ok(d),
            Err(e) if t.elapsed() > Duration::from_secs(2) => {
                return Err(LocalError::Tap {
                    name: name.to_owned(),
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The `wan-link` process: joins the site's bridge and the internet bridge with `wan` on what
/// leaves the site. Runs until a TAP fails (it is killed with the namespace).
pub fn run_link(index: u32, wan: Wan) -> Result<(), LocalError> {
    let (site_side, inet_side) = (tap(&site_tap(index))?, tap(&inet_tap(index))?);
    sh::ip_batch(
        None,
        &[
            format!("link set {} master {}", site_tap(index), site_bridge(index)),
            format!("link set {} master {BRIDGE}", inet_tap(index)),
        ],
    )?;
    let (mut from_site, mut to_site) = site_side.split();
    let (mut from_inet, mut to_inet) = inet_side.split();
    let inbound = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; FRAME_MAX];
        loop {
            let n = from_inet.read(&mut buf)?;
            to_site.write_all(&buf[..n])?;
        }
    });
    let queue: Arc<(Mutex<Outbound>, Condvar)> = Arc::default();
    let q = queue.clone();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let outbound = std::thread::spawn(move || -> std::io::Result<()> {
        let mut shaper = Shaper::new(wan, seed, Instant::now());
        let mut buf = vec![0u8; FRAME_MAX];
        loop {
            let n = from_site.read(&mut buf)?;
            if let Some(at) = shaper.departure(Instant::now(), n) {
                let (lock, ready) = &*q;
                lock.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back((at, buf[..n].to_vec()));
                ready.notify_one();
            }
        }
    });
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let (lock, ready) = &*queue;
        loop {
            let (at, frame) = {
                let mut q = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if let Some(f) = q.pop_front() {
                        break f;
                    }
                    q = ready
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            to_inet.write_all(&frame)?;
        }
    });
    for (direction, t) in [("in", inbound), ("out", outbound), ("send", sender)] {
        match t.join() {
            Ok(Err(source)) => return Err(LocalError::WanLink { direction, source }),
            Ok(Ok(())) => {}
            Err(_) => return Err(LocalError::WanLinkPanicked { direction }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan(latency_ms: u32, jitter_ms: u32, loss_bp: u32, bandwidth_kbit: Option<u64>) -> Wan {
        Wan {
            latency_ms,
            jitter_ms,
            loss_bp,
            bandwidth_kbit,
        }
    }

    #[test]
    fn latency_and_jitter_delay_each_frame_in_order() {
        let t0 = Instant::now();
        let mut s = Shaper::new(wan(50, 10, 0, None), 7, t0);
        let mut last = t0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            let at = s.departure(now, 100).unwrap();
            let d = at - now;
            assert!(d <= Duration::from_millis(60), "{d:?}");
            assert!(at >= last, "reordered");
            last = at;
        }
        // Without jitter, exactly the latency.
        let mut s = Shaper::new(wan(50, 0, 0, None), 7, t0);
        assert_eq!(s.departure(t0, 100), Some(t0 + Duration::from_millis(50)));
    }

    #[test]
    fn loss_drops_about_its_share() {
        let t0 = Instant::now();
        let mut s = Shaper::new(wan(0, 0, 500, None), 42, t0);
        let lost = (0..100_000)
            .filter(|_| s.departure(t0, 100).is_none())
            .count();
        assert!(
            (4_500..5_500).contains(&lost),
            "{lost} of 100000 lost at 5 %"
        );
    }

    #[test]
    fn the_bandwidth_cap_spaces_frames_and_drops_beyond_the_buffer() {
        let t0 = Instant::now();
        // 8 Mbit/s: a 1000-byte frame takes 1 ms.
        let mut s = Shaper::new(wan(0, 0, 0, Some(8_000)), 1, t0);
        let first = s.departure(t0, 1000).unwrap();
        let second = s.departure(t0, 1000).unwrap();
        assert_eq!(second - first, Duration::from_millis(1));
        // A burst at one instant: about 100 ms of it fits the buffer, the rest is dropped.
        let sent = (0..1000)
            .filter(|_| s.departure(t0, 1000).is_some())
            .count();
        assert!((95..=102).contains(&sent), "{sent}");
    }

    #[test]
    fn the_command_line_carries_the_conditions_observe_reads_back() {
        let w = wan(100, 5, 500, Some(100_000));
        let line = format!(
            "/usr/bin/hybridgrid {}",
            link_args("demo", "giessen", 2, &w).join(" ")
        );
        assert_eq!(parse_args(&line), Some(w));
        let w = wan(20, 0, 0, None);
        let line = link_args("demo", "a", 0, &w).join(" ");
        assert_eq!(parse_args(&line), Some(w));
    }
}
