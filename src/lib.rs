//! turn-bpf: a transparent eBPF/XDP offload for TURN ChannelData beside an unmodified TURN server.
//!
//! The binary (`src/main.rs`) is argument parsing and the run loop; everything it uses lives in
//! these modules so the integration tests and the load generator reach the same code.

pub mod agent;
pub mod attach;
pub mod baseline;
pub mod cli;
pub mod lab;
pub mod load;
pub mod progtest;
pub mod skel;
pub mod state;
pub mod stats;
pub mod turn_client;
