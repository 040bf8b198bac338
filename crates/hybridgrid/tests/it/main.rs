//! hybridgrid's one integration-test binary: the command line as users meet it (`cli`, its errors
//! in `errors`), and real clusters of the local provider in network namespaces (`lab`, with a
//! guard that cleans up), and openstack clusters against the project's OpenStack test bed
//! (`openstack`: the fake host's servers, API level; `openstack_cluster`: servers that boot, a
//! cluster that runs jobs).

mod cli;
mod errors;
mod graph;
mod lab;
mod openstack;
mod openstack_cluster;
mod secrets;
