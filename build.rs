//! Compiles every `bpf/*.bpf.c` into a libbpf-rs skeleton in `OUT_DIR`.
//!
//! `bpf/turn.bpf.c` becomes `$OUT_DIR/turn.skel.rs`, included by `src/skel.rs`.
//! Warnings are errors: a BPF program that compiles with a warning is a bug in waiting.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bpf_dir = Path::new("bpf");
    println!("cargo:rerun-if-changed=build.rs");
    rerun_for_tree(bpf_dir);

    // Debian keeps asm/types.h under the multiarch include directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let args = [
        multiarch.as_str(),
        "-Ibpf",
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-Werror",
        "-mcpu=v3",
    ];

    let mut sources: Vec<PathBuf> = fs::read_dir(bpf_dir)
        .expect("bpf/ exists")
        .map(|e| e.expect("readable bpf/ entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in sources {
        let file = src.file_name().unwrap().to_string_lossy().into_owned();
        let stem = file.trim_end_matches(".bpf.c");
        let skel = out.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(out.join(format!("{stem}.bpf.o")))
            .clang_args(args)
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
}

/// Every `.c` and `.h` under `dir` (recursively) triggers a rebuild when it changes.
fn rerun_for_tree(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in fs::read_dir(dir).expect("bpf/ is readable") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            rerun_for_tree(&path);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
