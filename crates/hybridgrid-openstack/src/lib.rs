//! The `openstack` provider of hybridgrid: a cluster's sites on real OpenStack clouds, one
//! `clouds.yaml` entry per site, through `openstack_sdk`.
//!
//! Per site, concurrently: network, subnet and router (or the site's existing network), the
//! plan's security groups and rules, a port per node with its fixed LAN address, servers booted
//! on those ports with cloud-init user data that runs the node agent ([`user_data`]), floating
//! IPs for the relays and allowed-address pairs on their ports (merged, never replaced).
//! Everything is named `<cluster>-…`, tagged (`hybridgrid`, `hybridgrid-cluster=<cluster>`,
//! `hybridgrid-site=<site>`; servers: metadata `hybridgrid_cluster`, `hybridgrid_node`) and
//! recorded in the ledger before it is created.

mod api;
mod apply;
mod boot;
mod booting;
mod channel;
mod cluster_nodes;
mod doctor;
mod down;
mod error;
pub mod ledger;
mod login;
pub mod nodes;
pub mod power;
mod power_host;
mod provider;
mod quota;
mod site;
mod site_groups;
mod site_observe;
mod site_pair;
mod site_ports;
mod site_servers;
mod store_files;
mod stores;
mod userdata;
mod validate;

pub use api::{CallTiming, CallTrace};
pub use error::{OsError, Result, Service};
pub use power_host::PowerHost;
pub use provider::{OpenStack, Options, Problem};
pub use site::{TAG, cluster_tag, site_tag};
pub use userdata::{
    AGENT_PATH, AGENT_STATE_DIR, METADATA_URL, NODE_CONFIG_PATH, PUBLIC_KEY_MARKER, PULL_UNIT,
    agent_unit, boot_config, public_key_from_console, user_data, user_data_for, user_data_with,
};
