//! The control channel between the host (`moat-vm`) and the guest agent.
//!
//! This library half of `moat-agent` holds only the wire protocol, so that
//! both ends share one codec; the binary half is the guest's PID 1.

pub mod netconf;
pub mod proto;
