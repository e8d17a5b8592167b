//! anpi's integration tests: one binary, each module a capability.

mod api;
mod browser;
mod cli;
mod crash;
mod drills;
mod email;
mod engine;
mod faults;
mod hq_api;
mod jma;
mod lineworks;
mod matrix;
mod replicas;
mod store_contract;
mod support;
mod synapse_support;
mod tools;
