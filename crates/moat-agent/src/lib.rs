//! The control channel between the host (`moat-vm`) and the guest agent.
//!
//! This library half of `moat-agent` holds the wire protocol, so that both
//! ends share one codec, and the audit summary the agent sends with it; the binary half is the guest's PID 1.

pub mod audit;
pub mod netconf;
pub mod proto;
