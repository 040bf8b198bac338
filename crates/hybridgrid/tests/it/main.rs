//! hybridgrid's one integration-test binary: the command line as users meet it (`cli`), and real
//! clusters of the local provider in network namespaces (`lab`, with a guard that cleans up), and
//! an openstack cluster against the project's OpenStack test bed (`openstack`).

mod cli;
mod graph;
mod lab;
mod openstack;
