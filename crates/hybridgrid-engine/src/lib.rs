//! The reconcile engine: one [`Provider`] trait, the rounds that drive it, and every rule the
//! providers share.
//!
//! Every command that plans goes through here, for every provider: `plan` = [`plan`] (observe →
//! `core::reconcile::plan`), `up` = [`up`] (rounds of observe → plan → apply until the plan has
//! no change), `status` = [`status`] (probe choice and tunnel rows in [`status`](mod@status)),
//! `doctor` = [`doctor()`] (facts from the provider, [`doctor::diagnose`] pure), on-demand
//! workers = [`power::power`]. `down`, `exec` and `run` have nothing to plan: the CLI calls
//! [`Provider::down`] and [`Nodes`] directly.
//! Architecture invariant: the changes `plan` prints are the changes `up` applies in its first
//! round — both come from [`plan`], and the engine never adds, drops or rewrites a change.
//! A provider knows its cloud and nothing else; it never loops over rounds itself.

pub mod doctor;
mod engine;
mod error;
pub mod munge;
pub mod pair_keys;
pub mod path;
pub mod power;
pub mod preshared;
mod provider;
mod report;
pub mod rotate;
pub mod status;

/// State on disk (its own small crate, shared with the agent): re-exported where the providers
/// look for it.
pub use hybridgrid_state as state;

pub use engine::{
    MAX_ROUNDS, PlanOf, converge, doctor, doctor_path, nodes, observe, plan, status, up,
};
pub use error::EngineError;
pub use provider::{
    AgentRun, Applied, Command, Event, Nodes, Probe, Provider, Settled, Sink, Stores, supports,
};
pub use report::{
    DownReport, HANDSHAKE_STALE_S, NodeStatus, NotDeleted, PairState, Pending, PendingKind, Reach,
    StatusReport, TunnelStatus, UpReport,
};
