//! # infra-service
//!
//! The hands of the platform: reads jobs from Redis Streams, runs
//! `ansible-playbook` against real servers, and publishes one result per job.
//!
//! (Architecture notes are completed as the modules land.)

pub mod ansible;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod job;
pub mod operator;
pub mod provider;
pub mod queue;
pub mod secrets;
pub mod shutdown;
pub mod ssh;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
