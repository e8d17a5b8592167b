//! anpi's integration tests: one binary, each module a capability.

mod action_list;
mod answers;
mod api;
mod browser;
mod cli;
mod cli_secrets;
mod cli_start_retry;
mod cli_terminal;
mod crash;
mod demo;
mod doc_commands;
mod drills;
mod email;
mod engine;
mod faults;
mod hq_api;
mod jma;
mod leaks;
mod lineworks;
mod matrix;
mod replicas;
mod simulator_restart;
mod store_contract;
mod support;
mod synapse_support;
mod tools;
