//! anpi's integration tests: one binary, each module a capability.

mod api;
mod cli;
mod crash;
mod engine;
mod faults;
mod replicas;
mod store_contract;
mod support;
