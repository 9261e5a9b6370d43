//! # infra-service
//!
//! The hands of the platform: reads jobs from Redis Streams, runs
//! `ansible-playbook` against real servers, and publishes one result per job.
//!
//! (Architecture notes are completed as the modules land.)

pub mod ansible;
pub mod config;
pub mod job;
pub mod secrets;
