//! turn-bpf's tools, kept apart from the agent: the network-namespace lab with the real coturn
//! (`lab`), a blocking TURN test client (`turn_client`), the agent process helper (`agent`), the
//! BPF_PROG_TEST_RUN harness and frame builders (`progtest`), crafted IPv4/UDP packets sent from
//! a lab namespace (`raw`), the load generator behind the `turn-load` binary (`load`), the
//! baseline XDP forwarder with the micro-benchmark (`baseline`), the agent's counters read live
//! from its map (`live_counters`) and its maps as the kernel sizes them (`agent_maps`), a real
//! Prometheus scraping the agent in a lab namespace (`prometheus`), and what the agent's own
//! upkeep costs at scale (`sweep_cost`). The agent's integration
//! tests and `scripts/bench.sh` use these.

pub mod agent;
pub mod agent_maps;
pub mod baseline;
pub mod lab;
pub mod live_counters;
pub mod load;
pub mod progtest;
pub mod prometheus;
pub mod raw;
pub mod scale;
pub mod sweep_cost;
pub mod turn_client;
