//! Compiles the test programs in `testkit/bpf/` (the baseline forwarder) into skeletons, with the
//! agent's own build function (`../build.rs`), so both are built with the same flags.

#[path = "../build.rs"]
mod agent_build;

use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build.rs");
    agent_build::compile_bpf_dir(Path::new("bpf"), &[Path::new("../bpf")], &out);
}
