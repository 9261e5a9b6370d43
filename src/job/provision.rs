//! `ProvisionJob`: the Scheduler's request to prepare or recover a server.

use super::fields::*;

/// A provision request that satisfies every rule of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionJob {
    pub request_id: RequestId,
    pub server_handle: ServerHandle,
    pub force_reinstall: bool,
    pub is_recovery: bool,
}

impl ProvisionJob {
    /// Parses a stream entry's `payload`; `entry_id` stands in for an absent
    /// `request_id`.
    pub fn parse(_payload: &[u8], _entry_id: &str) -> Result<ProvisionJob, InvalidPayload> {
        unimplemented!()
    }
}
