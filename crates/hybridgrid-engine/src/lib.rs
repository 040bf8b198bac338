//! The reconcile engine: one [`Provider`] trait and the rounds that drive it.
//!
//! Every lifecycle command goes through here, for every provider:
//! `plan` = [`plan`] (observe → `core::plan`), `up` = [`up`] (rounds of observe → plan → apply
//! until the plan has no change), `status` = [`status`], `doctor` = [`doctor()`] (facts from the provider, [`doctor::diagnose`]
//! pure), `down` = [`Provider::down`].
//! Architecture invariant: the changes `plan` prints are the changes `up` applies in its first
//! round — both come from [`plan`], and the engine never adds, drops or rewrites a change.
//! A provider knows its cloud and nothing else; it never loops over rounds itself.

pub mod doctor;
mod engine;
mod error;
pub mod path;
pub mod power;
mod provider;
mod report;
pub mod state;

pub use engine::{MAX_ROUNDS, doctor, doctor_path, plan, status, up};
pub use error::EngineError;
pub use provider::{Applied, Command, Event, Probe, Provider, Settled, Sink};
pub use report::{
    DownReport, HANDSHAKE_STALE_S, NodeStatus, NotDeleted, Reach, StatusReport, TunnelStatus,
    UpReport,
};
