//! turn-bpf: a transparent eBPF/XDP offload for TURN ChannelData beside an unmodified TURN server.
//!
//! The binary (`src/main.rs`) is argument parsing and the run loop; the agent's parts live in
//! these modules, one for each thing they hold. The lab, the test client, the packet harness and
//! the load generator are in the `turn-bpf-testkit` crate (`testkit/`), not here.

pub mod attach;
pub mod batch;
pub mod cli;
pub mod consts;
pub mod far_end;
pub mod gobuild;
pub mod maps;
pub mod metrics;
pub mod offload;
pub mod owners;
pub mod pin;
pub mod preflight;
pub mod probe;
pub mod runlock;
pub mod server;
pub mod server_conf;
pub mod sizing;
pub mod skel;
pub mod snapshot;
pub mod sockdiag;
pub mod stats;
pub mod status;
pub mod sweep;
