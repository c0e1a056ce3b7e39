//! The generated libbpf-rs skeleton of `bpf/turn.bpf.c` (built by `build.rs`).
#![allow(
    clippy::all,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]

include!(concat!(env!("OUT_DIR"), "/turn.skel.rs"));
