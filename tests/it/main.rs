//! anpi's integration tests: one binary, each module a capability.

mod api;
mod cli;
mod crash;
mod engine;
mod faults;
mod matrix;
mod store_contract;
mod support;
mod synapse_support;
