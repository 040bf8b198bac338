//! What the environment may change, read once at the start of a run (ripgrep's low-args →
//! high-args): every variable is looked up and checked here, a bad value is an error naming the
//! variable and the value, and the rest of the CLI takes its values from [`Settings`] (the
//! providers through their `Options`, built in `providers.rs`).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

/// Where clusters keep their state: `HYBRIDGRID_STATE_DIR`.
pub const STATE_DIR: &str = "HYBRIDGRID_STATE_DIR";
/// Seconds between the local nodes' supervisor runs: `HYBRIDGRID_AGENT_PERIOD`.
pub const AGENT_PERIOD: &str = "HYBRIDGRID_AGENT_PERIOD";
/// How long openstack's `up` waits for booting nodes: `HYBRIDGRID_BOOT_TIMEOUT`.
pub const BOOT_TIMEOUT: &str = "HYBRIDGRID_BOOT_TIMEOUT";
/// Where cloud nodes download the agent at first boot: `HYBRIDGRID_AGENT_URL`.
pub const AGENT_URL: &str = "HYBRIDGRID_AGENT_URL";
/// The SHA-256 of the binary at `HYBRIDGRID_AGENT_URL`: `HYBRIDGRID_AGENT_SHA256`.
pub const AGENT_SHA256: &str = "HYBRIDGRID_AGENT_SHA256";
/// The agent binary `up` installs over SSH: `HYBRIDGRID_AGENT_BINARY`.
pub const AGENT_BINARY: &str = "HYBRIDGRID_AGENT_BINARY";
/// Hidden test knob, `off`: servers that never boot have no SSH: `HYBRIDGRID_NODE_CHANNEL`.
pub const NODE_CHANNEL: &str = "HYBRIDGRID_NODE_CHANNEL";
/// The clouds file (the `openstack` CLI's variable): `OS_CLIENT_CONFIG_FILE`.
pub const CLOUDS_FILE: &str = "OS_CLIENT_CONFIG_FILE";
/// The user's home, for `~/` in the cluster file's `ssh_public_key`: `HOME`.
pub const HOME: &str = "HOME";

/// The supervisors' period when `HYBRIDGRID_AGENT_PERIOD` is not set.
const DEFAULT_AGENT_PERIOD: Duration = Duration::from_secs(10);

/// Every setting of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The state root: one folder per cluster below it (default
    /// [`hybridgrid_engine::state::DEFAULT_ROOT`]).
    pub state_root: PathBuf,
    /// How often each local node's supervisor applies its configuration again; zero: never.
    pub agent_period: Duration,
    /// openstack: how long `up` waits for booting nodes; `None`: the provider's default.
    pub boot_timeout: Option<Duration>,
    /// openstack: where nodes download the agent binary at first boot (else the image has it or
    /// the node channel brings it).
    pub agent_url: Option<String>,
    /// openstack: the SHA-256 (64 hex digits) nodes check the download from `agent_url` against.
    pub agent_sha256: Option<String>,
    /// openstack: the agent binary `up` installs; `None`: `hybridgrid-agent` beside `hybridgrid`.
    pub agent_binary: Option<PathBuf>,
    /// openstack: whether nodes are reached over SSH (`HYBRIDGRID_NODE_CHANNEL=off`: not).
    pub node_channel: bool,
    /// openstack: the clouds file to read; `None`: the standard locations.
    pub clouds_file: Option<PathBuf>,
    /// openstack: what `~/` stands for in `ssh_public_key`; `None`: no home (a `~/` path is
    /// then an error naming it).
    pub home: Option<PathBuf>,
}

/// A setting the environment holds a bad value for.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum SettingsError {
    /// {var}={value:?} is not a whole number of seconds
    Seconds {
        var: &'static str,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// {var}={value:?}: {expected}
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl Settings {
    /// The state folder of cluster `name` on this machine (its ledger, keys, operation lock).
    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.state_root.join(name)
    }

    /// The settings of this process's environment.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::from_lookup(|var| std::env::var_os(var))
    }

    /// The settings `lookup` (a variable's value, `None` when unset) gives.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Settings, SettingsError> {
        let env = Env(&lookup);
        Ok(Settings {
            state_root: env
                .path(STATE_DIR)?
                .unwrap_or_else(|| hybridgrid_engine::state::DEFAULT_ROOT.into()),
            agent_period: env.seconds(AGENT_PERIOD)?.unwrap_or(DEFAULT_AGENT_PERIOD),
            boot_timeout: env.seconds(BOOT_TIMEOUT)?,
            agent_url: env.url(AGENT_URL)?,
            agent_sha256: env.sha256(AGENT_SHA256)?,
            agent_binary: env.path(AGENT_BINARY)?,
            node_channel: env.on_off(NODE_CHANNEL)?.unwrap_or(true),
            clouds_file: env.path(CLOUDS_FILE)?,
            home: env.path(HOME).ok().flatten(),
        })
    }
}

/// The environment, read one variable at a time, each checked for what it holds.
struct Env<'a>(&'a dyn Fn(&str) -> Option<OsString>);

impl Env<'_> {
    fn invalid(var: &'static str, value: &OsStr, expected: &'static str) -> SettingsError {
        SettingsError::Invalid {
            var,
            value: value.to_string_lossy().into_owned(),
            expected,
        }
    }

    /// A variable that must be UTF-8 text.
    fn text(&self, var: &'static str) -> Result<Option<String>, SettingsError> {
        match (self.0)(var) {
            None => Ok(None),
            Some(v) => v
                .into_string()
                .map(Some)
                .map_err(|v| Env::invalid(var, &v, "not UTF-8 text")),
        }
    }

    /// A file or folder (any bytes but none at all).
    fn path(&self, var: &'static str) -> Result<Option<PathBuf>, SettingsError> {
        match (self.0)(var) {
            Some(v) if v.is_empty() => Err(Env::invalid(var, &v, "empty; name a path or unset it")),
            v => Ok(v.map(PathBuf::from)),
        }
    }

    fn seconds(&self, var: &'static str) -> Result<Option<Duration>, SettingsError> {
        let Some(value) = self.text(var)? else {
            return Ok(None);
        };
        match value.trim().parse::<u64>() {
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(source) => Err(SettingsError::Seconds { var, value, source }),
        }
    }

    fn url(&self, var: &'static str) -> Result<Option<String>, SettingsError> {
        match self.text(var)? {
            Some(v) if !(v.starts_with("http://") || v.starts_with("https://")) => Err(
                Env::invalid(var, OsStr::new(&v), "not an http:// or https:// URL"),
            ),
            v => Ok(v),
        }
    }

    fn sha256(&self, var: &'static str) -> Result<Option<String>, SettingsError> {
        match self.text(var)? {
            Some(v) if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) => Err(
                Env::invalid(var, OsStr::new(&v), "not a SHA-256 (64 hex digits)"),
            ),
            v => Ok(v),
        }
    }

    fn on_off(&self, var: &'static str) -> Result<Option<bool>, SettingsError> {
        match self.text(var)?.as_deref() {
            None => Ok(None),
            Some("on") => Ok(Some(true)),
            Some("off") => Ok(Some(false)),
            Some(v) => Err(Env::invalid(var, OsStr::new(v), "`on` or `off`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_lookup(|var| {
            vars.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn nothing_set_gives_the_defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.state_root, PathBuf::from("/var/lib/hybridgrid"));
        assert_eq!(s.agent_period, Duration::from_secs(10));
        assert_eq!((s.boot_timeout, s.node_channel), (None, true));
        assert_eq!(
            (s.agent_url, s.agent_binary, s.clouds_file),
            (None, None, None)
        );
    }

    #[test]
    fn every_variable_is_read() {
        let sha = "ab".repeat(32);
        let s = settings(&[
            (STATE_DIR, "/tmp/st"),
            (AGENT_PERIOD, "0"),
            (BOOT_TIMEOUT, "30"),
            (AGENT_URL, "http://203.0.113.1/agent"),
            (AGENT_SHA256, &sha),
            (AGENT_BINARY, "/opt/agent"),
            (NODE_CHANNEL, "off"),
            (CLOUDS_FILE, "/etc/clouds.yaml"),
        ])
        .unwrap();
        assert_eq!(s.state_root, PathBuf::from("/tmp/st"));
        assert_eq!(s.agent_period, Duration::ZERO);
        assert_eq!(s.boot_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.agent_url.as_deref(), Some("http://203.0.113.1/agent"));
        assert_eq!(s.agent_sha256, Some(sha));
        assert_eq!(s.agent_binary, Some(PathBuf::from("/opt/agent")));
        assert!(!s.node_channel);
        assert_eq!(s.clouds_file, Some(PathBuf::from("/etc/clouds.yaml")));
    }

    /// A bad value is an error naming the variable and the value, never a default.
    #[test]
    fn a_bad_value_is_an_error_naming_the_variable_and_the_value() {
        for (var, value, says) in [
            (AGENT_PERIOD, "ten", "is not a whole number of seconds"),
            (BOOT_TIMEOUT, "-1", "is not a whole number of seconds"),
            (STATE_DIR, "", "empty"),
            (AGENT_URL, "ftp://x/agent", "not an http:// or https:// URL"),
            (AGENT_SHA256, "abc", "64 hex digits"),
            (NODE_CHANNEL, "no", "`on` or `off`"),
        ] {
            let e = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{var}={value:?}")) && e.contains(says),
                "{var}={value}: {e}"
            );
        }
    }
}
