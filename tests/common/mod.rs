//! Helpers shared by the integration tests that run the agent in a lab.
#![allow(dead_code)]

use std::path::PathBuf;

use turn_bpf::lab::{Host, Lab};

/// Why this test cannot run here (not root, coturn missing), or None.
pub fn skip() -> Option<String> {
    turn_bpf::lab::skip_reason()
}

#[macro_export]
macro_rules! skip_unless_lab {
    () => {
        if let Some(why) = common::skip() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_turn-bpf"))
}

pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("{name}.log"))
}

/// Is an XDP program attached to `dev` in the server namespace?
pub fn xdp_attached(lab: &Lab, dev: &str) -> bool {
    lab.exec(Host::Srv, &["ip", "-d", "link", "show", "dev", dev])
        .map(|s| s.contains("prog/xdp"))
        .unwrap_or(false)
}

/// `tc filter show dev <dev> <dir>` in the server namespace.
pub fn tc_filters(lab: &Lab, dev: &str, dir: &str) -> String {
    lab.exec(Host::Srv, &["tc", "filter", "show", "dev", dev, dir])
        .unwrap_or_default()
}

pub fn has_clsact(lab: &Lab, dev: &str) -> bool {
    lab.exec(Host::Srv, &["tc", "qdisc", "show", "dev", dev])
        .map(|s| s.contains("clsact"))
        .unwrap_or(false)
}

pub fn forwarding(lab: &Lab, dev: &str) -> String {
    lab.exec(
        Host::Srv,
        &["sysctl", "-n", &format!("net.ipv4.conf.{dev}.forwarding")],
    )
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// Nothing of the agent's is left on the lab's server interfaces.
pub fn assert_clean(lab: &Lab) {
    for dev in ["turn0", "relay0"] {
        assert!(!xdp_attached(lab, dev), "XDP left on {dev}");
        assert_eq!(
            tc_filters(lab, dev, "egress").trim(),
            "",
            "TC filter left on {dev}"
        );
        assert!(!has_clsact(lab, dev), "clsact qdisc left on {dev}");
        assert_eq!(forwarding(lab, dev), "0", "forwarding left on on {dev}");
    }
}
