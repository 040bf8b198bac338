//! A relay pair on this relay: keepalived with the configuration [`hybridgrid_core::vrrp`]
//! writes, the relay's health in the file keepalived watches, and whether this relay is the
//! active one (it holds the pair's virtual address).
//!
//! State folder: `keepalived.conf`, `keepalived.pid` and `keepalived-vrrp.pid`, `keepalived.log`,
//! `relay-health` (`0`: healthy; anything else puts VRRP in FAULT, and the partner takes over).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use hybridgrid_core::node::{NodeConfig, RelayPair, Route, WgInterface};
use hybridgrid_core::vrrp::{
    HEALTH_FILE, HEARTBEAT_PORT, VrrpNode, keepalived_conf, standby_routes,
};

use crate::AgentError;
use crate::sys::{self, write_atomic};

const CONF_FILE: &str = "keepalived.conf";
const PID_FILE: &str = "keepalived.pid";
const VRRP_PID_FILE: &str = "keepalived-vrrp.pid";
const LOG_FILE: &str = "keepalived.log";
/// The log of keepalived's state changes `agent relay-state` keeps.
pub const RELAY_STATE_LOG: &str = "relay-state.log";

/// keepalived runs with this relay's configuration; a changed configuration is reloaded
/// (SIGHUP: VRRP keeps its state). The health file exists before keepalived reads it.
pub fn ensure(
    pair: &RelayPair,
    wg: Option<&WgInterface>,
    state_dir: &Path,
    exe: &Path,
    tag: &str,
    actions: &mut Vec<String>,
) -> Result<(), AgentError> {
    let lan_if = interface_with(pair.lan_ip)?.ok_or_else(|| AgentError::Command {
        command: "keepalived".into(),
        detail: format!("no interface holds this relay's address {}", pair.lan_ip),
    })?;
    // The supervisor keeps the health up to date every second (a yield to the partner
    // included); here only a first value, before keepalived reads it.
    let health = state_dir.join(HEALTH_FILE);
    if !health.exists() {
        write_health(state_dir, wg.is_some_and(|w| healthy(&w.name)))?;
    }
    // keepalived appends its words to this line: an empty `--tag` would take the first.
    let tag_arg = match tag.is_empty() {
        true => String::new(),
        false => format!(" --tag {tag}"),
    };
    let notify = format!(
        "{} agent relay-state --state-dir {}{tag_arg}",
        exe.display(),
        state_dir.display()
    );
    let conf = keepalived_conf(
        pair,
        &VrrpNode {
            name: tag,
            lan_if: &lan_if,
            health_file: &health.to_string_lossy(),
            notify: &notify,
        },
    );
    let conf_path = state_dir.join(CONF_FILE);
    let changed = std::fs::read_to_string(&conf_path).ok().as_deref() != Some(conf.as_str());
    if changed {
        write_atomic(&conf_path, conf.as_bytes(), 0o600)?;
    }
    match running(state_dir) {
        Some(pid) if changed => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(|e| AgentError::Command {
                command: format!("kill -HUP {pid} (keepalived)"),
                detail: e.to_string(),
            })?;
            actions.push("keepalived: configuration reloaded".into());
        }
        Some(_) => {}
        None => {
            // A keepalived that was killed left the address and its routes: the new one starts
            // as the standby, without them.
            release(pair, &lan_if);
            start(state_dir, &conf_path)?;
            actions.push(format!("keepalived: VRRP with {}", pair.partner));
        }
    }
    Ok(())
}

/// keepalived stopped (the node is no longer in a pair); it gives the virtual address up.
pub fn stop(state_dir: &Path, actions: &mut Vec<String>) {
    if let Some(pid) = running(state_dir) {
        sys::stop_processes(&[pid]);
        actions.push("keepalived stopped".into());
    }
    for f in [
        CONF_FILE,
        PID_FILE,
        VRRP_PID_FILE,
        HEALTH_FILE,
        SPEAKING_FILE,
        PARTNER_HOLDS_FILE,
    ] {
        let _ = std::fs::remove_file(state_dir.join(f));
    }
}

/// The virtual address and the routes from it, gone from this relay.
fn release(pair: &RelayPair, lan_if: &str) {
    if active(pair) {
        let _ = sys::run("ip", &["addr", "del", &pair.vip.to_string(), "dev", lan_if]);
    }
    for half in ["0.0.0.0/1", "128.0.0.0/1"] {
        let _ = sys::run("ip", &["route", "del", half]);
    }
}

/// Whether keepalived runs for this relay.
pub fn running(state_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (sys::alive(pid) && sys::cmdline(pid).contains("keepalived")).then_some(pid)
}

fn start(state_dir: &Path, conf: &Path) -> Result<(), AgentError> {
    let path = |f: &str| -> PathBuf { state_dir.join(f) };
    // In the foreground, logging to its file: several relays of the local provider share the
    // host's syslog and /run.
    let mut cmd = Command::new("keepalived");
    cmd.args([
        "--vrrp",
        "--dont-fork",
        "--log-console",
        "--no-syslog",
        "--log-detail",
    ])
    .arg("-f")
    .arg(conf)
    .arg("-p")
    .arg(path(PID_FILE))
    .arg("-r")
    .arg(path(VRRP_PID_FILE));
    sys::spawn_daemon(cmd, &path(LOG_FILE), "keepalived")?;
    sys::wait_for("keepalived", Duration::from_secs(10), || running(state_dir)).map(drop)
}

/// The relay's data path as far as this relay can judge it alone: its tunnel device is there
/// and up, and it forwards.
pub fn healthy(wg_if: &str) -> bool {
    let device_up = sys::Link::read(wg_if).is_ok_and(|l| l.up);
    let forwarding =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|f| f.trim() == "1");
    device_up && forwarding
}

/// The health keepalived reads, written only when it changed (keepalived watches the file).
pub fn write_health(state_dir: &Path, healthy: bool) -> Result<(), AgentError> {
    let path = state_dir.join(HEALTH_FILE);
    let value = if healthy { "0\n" } else { "1\n" };
    if std::fs::read_to_string(&path).ok().as_deref() != Some(value) {
        write_atomic(&path, value.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Whether this relay holds its pair's virtual address.
pub fn active(pair: &RelayPair) -> bool {
    interface_with(pair.vip.addr()).is_ok_and(|i| i.is_some())
}

/// keepalived's state on this relay as its notify program last logged it (`MASTER`, `BACKUP`,
/// `FAULT`), `None` when keepalived does not run.
pub fn state_word(state_dir: &Path) -> Option<String> {
    running(state_dir)?;
    let log = std::fs::read_to_string(state_dir.join(RELAY_STATE_LOG)).ok();
    // `<stamp> INSTANCE <name> <STATE> <priority> → …`
    let word = log
        .as_deref()
        .and_then(|l| l.lines().last())
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("starting");
    Some(word.to_owned())
}

/// Whether the node's tunnel device gets its peers: not in a pair, or the pair's active relay
/// (it holds the virtual address and its keepalived runs: one that was killed leaves the
/// address behind while the partner takes it), unless both hold it (VRRP between them lost)
/// and this one's address is the higher: it yields within a second and must not pull the
/// peers' sessions to itself meanwhile (what reaches it is forwarded to the partner).
pub fn speaks(pair: Option<&RelayPair>, state_dir: &Path) -> bool {
    pair.is_none_or(|p| {
        let split_loser = p.lan_ip > p.partner_ip && partner_holds(state_dir);
        active(p) && running(state_dir).is_some() && !split_loser
    })
}

/// Where the agent notes whether its last apply gave the device its peers.
const SPEAKING_FILE: &str = "speaking";

/// Notes whether this apply gave the tunnel device its peers (only when that changed).
pub fn note_speaking(state_dir: &Path, speaks: bool) -> Result<(), AgentError> {
    if noted_speaking(state_dir) != Some(speaks) {
        let word: &[u8] = if speaks { b"1\n" } else { b"0\n" };
        write_atomic(&state_dir.join(SPEAKING_FILE), word, 0o644)?;
    }
    Ok(())
}

/// What the last apply noted, if it did.
pub fn noted_speaking(state_dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(state_dir.join(SPEAKING_FILE)).ok()?;
    Some(text.trim() == "1")
}

/// Whether the partner said less than [`HEARTBEAT_FRESH`] ago that it holds the address.
fn partner_holds(state_dir: &Path) -> bool {
    let Some(said) = std::fs::read_to_string(state_dir.join(PARTNER_HOLDS_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<u128>().ok())
    else {
        return false;
    };
    unix_ms().saturating_sub(said) < HEARTBEAT_FRESH.as_millis()
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The routes the node applies now: a standby's cross-site routes lead to its partner (not
/// while it holds the address itself, yielding in a split brain: a route through its own
/// address is no route).
pub fn routes_now(config: &NodeConfig, speaks: bool) -> Vec<Route> {
    match &config.pair {
        Some(pair) if !speaks && !active(pair) => standby_routes(&config.routes, pair),
        _ => config.routes.clone(),
    }
}

/// The interface that holds `ip` in this network namespace (no process).
fn interface_with(ip: Ipv4Addr) -> Result<Option<String>, AgentError> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| AgentError::Command {
        command: "getifaddrs".into(),
        detail: e.to_string(),
    })?;
    Ok(all
        .filter(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|s| s.ip() == ip)
        })
        .map(|a| a.interface_name)
        .next())
}

/// One datagram through the tunnel to each peer: WireGuard starts its handshake with every peer
/// at once instead of at the next keepalive (up to its interval), so a relay that just took
/// over is reachable through the tunnel within a round trip.
pub fn start_handshakes(wg: &WgInterface) {
    let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
        return;
    };
    for peer in &wg.peers {
        // The peer's tunnel address: its first allowed IP, a /32.
        if let Some(net) = peer.allowed_ips.iter().find(|n| n.prefix_len() == 32) {
            // The discard port: nothing answers, the handshake is what counts.
            let _ = socket.send_to(b"hybridgrid", (net.addr(), 9));
        }
    }
}

/// How long a partner's word counts: past one missed heartbeat, and shorter than VRRP takes to
/// notice a dead master (3 × 0.5 s and its skew), so a relay taking over from a dead partner
/// no longer believes it.
const HEARTBEAT_FRESH: Duration = Duration::from_millis(1_500);
/// Where the supervisor notes when the partner last said it holds the address (Unix ms), for the
/// agent's other runs (keepalived's notify program).
const PARTNER_HOLDS_FILE: &str = "partner-holds";
/// How long a relay that yielded stays out (FAULT) while its partner holds the address; then it
/// stands by again (if VRRP between them is still lost it becomes master, sees the partner,
/// and yields again within a second).
const YIELD_FOR: Duration = Duration::from_secs(30);

/// The relays of a pair tell each other every second whether they hold the virtual address, on
/// a path of their own (UDP on the site LAN, not VRRP): when VRRP between them is lost, both
/// become master, and the one with the higher LAN address yields. A thread takes the partner's
/// words in as they arrive (its time is when it was said, give or take the LAN), and notes them
/// in the state folder for the agent's other runs.
#[derive(Debug)]
pub struct Heartbeat {
    socket: UdpSocket,
    own_ip: Ipv4Addr,
    partner: SocketAddrV4,
    /// What the partner said last and when, and when it last said it was cut off.
    heard: std::sync::Arc<std::sync::Mutex<Heard>>,
    yielded: Option<Instant>,
    /// Whether this relay, while active, reaches any other site ([`crate::cut_off`]).
    cut_off: crate::cut_off::CutOff,
    state_dir: PathBuf,
}

/// What a relay tells its partner every second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// It holds the address and its data path is healthy.
    Active,
    /// It stands by with a healthy data path: it can take over.
    Ready,
    /// Its data path is broken: it cannot take over.
    Unready,
    /// It holds the address but reaches no other site: it gives the role up if its partner is
    /// ready.
    CutOff,
}

impl Word {
    fn text(self) -> &'static [u8] {
        match self {
            Word::Active => b"active",
            Word::Ready => b"ready",
            Word::Unready => b"unready",
            Word::CutOff => b"cut-off",
        }
    }

    fn parse(b: &[u8]) -> Option<Word> {
        // An agent from before these words said `standby` (while `up` upgrades the two).
        if b == b"standby" {
            return Some(Word::Ready);
        }
        [Word::Active, Word::Ready, Word::Unready, Word::CutOff]
            .into_iter()
            .find(|w| w.text() == b)
    }
}

/// The partner's words as the listening thread took them in; whether it gave the role up cut
/// off (kept in [`PARTNER_CUT_OFF_FILE`] too, so a restarted supervisor still knows).
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    last: Option<(Word, Instant)>,
    partner_cut_off: bool,
}

/// Where the supervisor notes that the partner gave the role up cut off (and no peer was heard
/// since).
const PARTNER_CUT_OFF_FILE: &str = "partner-cut-off";

impl Heartbeat {
    pub fn open(pair: &RelayPair, state_dir: &Path) -> Result<Heartbeat, AgentError> {
        let at = SocketAddrV4::new(pair.lan_ip, HEARTBEAT_PORT);
        let fail = |what: &str, e: std::io::Error| AgentError::Command {
            command: format!("{what} {at} (relay pair heartbeat)"),
            detail: e.to_string(),
        };
        let socket = UdpSocket::bind(at).map_err(|e| fail("bind", e))?;
        let listener = socket.try_clone().map_err(|e| fail("clone", e))?;
        listener
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| fail("timeout on", e))?;
        let heartbeat = Heartbeat {
            socket,
            own_ip: pair.lan_ip,
            partner: SocketAddrV4::new(pair.partner_ip, HEARTBEAT_PORT),
            heard: std::sync::Arc::new(std::sync::Mutex::new(Heard {
                last: None,
                partner_cut_off: state_dir.join(PARTNER_CUT_OFF_FILE).exists(),
            })),
            yielded: None,
            cut_off: crate::cut_off::CutOff::default(),
            state_dir: state_dir.to_owned(),
        };
        let (heard, partner) = (heartbeat.heard.clone(), pair.partner_ip);
        let files = (
            state_dir.join(PARTNER_HOLDS_FILE),
            state_dir.join(PARTNER_CUT_OFF_FILE),
        );
        std::thread::spawn(move || listen(&listener, partner, &heard, &files));
        Ok(heartbeat)
    }

    /// Tells the partner where this relay stands.
    pub fn say(&self, word: Word) {
        let _ = self.socket.send_to(word.text(), self.partner);
    }

    fn heard(&self) -> Heard {
        *self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn partner_said(&self, word: Word) -> bool {
        self.heard()
            .last
            .is_some_and(|(w, at)| w == word && at.elapsed() < HEARTBEAT_FRESH)
    }

    /// Whether the partner holds the address and means to keep it (a cut-off partner is giving
    /// it up: it is no rival in a split brain).
    fn partner_holds(&self) -> bool {
        self.partner_said(Word::Active)
    }

    /// A peer answered this active relay: the partner's cut-off was its own.
    fn forget_partner_cut_off(&self) {
        let mut heard = self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if heard.partner_cut_off {
            heard.partner_cut_off = false;
            let _ = std::fs::remove_file(self.state_dir.join(PARTNER_CUT_OFF_FILE));
        }
    }

    /// Whether this relay, holding the address, reaches no other site through its tunnel
    /// ([`crate::cut_off::CutOff::look`]).
    pub fn cut_off(
        &mut self,
        holds: bool,
        silent_for: Option<Duration>,
        read: impl FnOnce() -> Option<Vec<(String, u64)>>,
    ) -> bool {
        self.cut_off.look(holds, silent_for, read)
    }

    /// Whether this relay must stay out of the election now: both hold the address and this
    /// one's is the higher; or it is cut off, its partner is ready, and that partner did not
    /// itself give the role up cut off with no peer heard since (then the outage is not the
    /// relays' own); or it yielded less than [`YIELD_FOR`] ago and the partner holds the address
    /// (or has had no time to say so yet).
    pub fn must_yield(&mut self, holds: bool, cut_off: bool) -> bool {
        let partner = self.partner_holds();
        let higher = self.own_ip > *self.partner.ip();
        if holds && self.cut_off.heard_a_peer() {
            self.forget_partner_cut_off();
        }
        let partner_was_cut_off = self.heard().partner_cut_off;
        let hand_over = cut_off && self.partner_said(Word::Ready) && !partner_was_cut_off;
        let yielding = match (holds, partner, self.yielded) {
            (true, true, _) => higher,
            (true, false, _) => hand_over,
            (false, partner, Some(since)) => {
                since.elapsed() < YIELD_FOR && (partner || since.elapsed() < 2 * HEARTBEAT_FRESH)
            }
            _ => false,
        };
        match (yielding, self.yielded) {
            (true, None) => self.yielded = Some(Instant::now()),
            (false, Some(_)) => self.yielded = None,
            _ => {}
        }
        yielding
    }
}

/// The partner's words as they arrive: "holds it" noted with its time, "no longer" at once (a
/// partner that gave the address up must not keep this relay from speaking until its word went
/// stale), "cut off" remembered. Only words from the partner's address count (port security
/// keeps other ports from sending with it). Ends when the [`Heartbeat`] is gone (the node left
/// its pair).
fn listen(
    socket: &UdpSocket,
    partner: Ipv4Addr,
    heard: &std::sync::Arc<std::sync::Mutex<Heard>>,
    (file, cut_off_file): &(PathBuf, PathBuf),
) {
    let mut buf = [0u8; 16];
    while std::sync::Arc::strong_count(heard) > 1 {
        // A timeout lets the loop see whether it is still wanted; a signal (the supervisor
        // reaps its children) interrupts a wait; anything else is tried again shortly.
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(word) = Word::parse(&buf[..n]) else {
            continue;
        };
        if from.ip() != std::net::IpAddr::V4(partner) {
            continue;
        }
        // A cut-off partner is giving the address up: this relay may speak once it holds it.
        let holds = word == Word::Active;
        let held = {
            let mut h = heard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = h.last.is_some_and(|(w, _)| w == Word::Active);
            h.last = Some((word, Instant::now()));
            if word == Word::CutOff && !h.partner_cut_off {
                h.partner_cut_off = true;
                let _ = write_atomic(cut_off_file, b"1\n", 0o644);
            }
            held
        };
        let _ = match (holds, held) {
            (true, _) => write_atomic(file, format!("{}\n", unix_ms()).as_bytes(), 0o644),
            (false, true) => write_atomic(file, b"0\n", 0o644),
            (false, false) => Ok(()),
        };
    }
}
