//! anpi's integration tests: one binary, each module a capability.

mod api;
mod cli;
mod crash;
mod drills;
mod engine;
mod faults;
mod store_contract;
mod support;
