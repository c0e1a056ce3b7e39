//! What the kernel must offer, probed at start-up before anything is loaded or attached: each
//! program type, map type and helper the programs use, XDP links, the atomic instructions, and
//! (optional) the BTF tracepoints of the drop counters. A kernel that lacks one is refused with
//! one line naming what is missing and the kernel's version, instead of a verifier log.
//!
//! Program and map types and helpers are asked of the kernel itself (libbpf's
//! `libbpf_probe_bpf_*`, which load tiny programs and create tiny maps); XDP links and the
//! tracepoints are looked up in the kernel's BTF (`/sys/kernel/btf/vmlinux`); the atomics are
//! a three-instruction program with a 64-bit compare-and-exchange, loaded and freed at once.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use log::debug;

/// One thing the agent needs from the kernel, and the Linux version that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as the refusal names it.
    pub what: &'static str,
    /// The first Linux version that has it.
    pub since: &'static str,
}

/// How a feature is asked for.
#[derive(Debug, Clone, Copy)]
enum Probe {
    ProgType(libbpf_sys::bpf_prog_type),
    MapType(libbpf_sys::bpf_map_type),
    Helper(libbpf_sys::bpf_prog_type, libbpf_sys::bpf_func_id),
    /// A type of this name and kind in the kernel's BTF.
    Btf(&'static str, u32),
    /// The same where the kernel has BTF; without it the feature cannot be told here and is
    /// taken as present (attaching says so if it is not).
    BtfIfAny(&'static str, u32),
    Atomics,
}

const XDP: libbpf_sys::bpf_prog_type = libbpf_sys::BPF_PROG_TYPE_XDP;
const TC: libbpf_sys::bpf_prog_type = libbpf_sys::BPF_PROG_TYPE_SCHED_CLS;

/// Everything the programs of `bpf/turn.bpf.c` need, with the version that brought it.
const REQUIRED: &[(Probe, Feature)] = &[
    (Probe::ProgType(XDP), f("XDP programs", "4.8")),
    (Probe::ProgType(TC), f("TC (sched_cls) programs", "4.1")),
    (
        Probe::MapType(libbpf_sys::BPF_MAP_TYPE_HASH),
        f("hash maps", "3.19"),
    ),
    (
        Probe::MapType(libbpf_sys::BPF_MAP_TYPE_ARRAY),
        f("array maps", "3.19"),
    ),
    (
        Probe::MapType(libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY),
        f("per-CPU array maps", "4.6"),
    ),
    (
        Probe::MapType(libbpf_sys::BPF_MAP_TYPE_LRU_HASH),
        f("LRU hash maps", "4.10"),
    ),
    (
        Probe::MapType(libbpf_sys::BPF_MAP_TYPE_LPM_TRIE),
        f("LPM trie maps", "4.11"),
    ),
    (
        Probe::MapType(libbpf_sys::BPF_MAP_TYPE_DEVMAP_HASH),
        f("devmap hash maps (bpf_redirect_map targets)", "5.4"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_fib_lookup),
        f("bpf_fib_lookup in XDP", "4.18"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_xdp_adjust_head),
        f("bpf_xdp_adjust_head", "4.10"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_xdp_adjust_tail),
        f("bpf_xdp_adjust_tail", "4.18"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_xdp_load_bytes),
        f("bpf_xdp_load_bytes", "5.18"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_redirect_map),
        f("bpf_redirect_map in XDP", "4.14"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_csum_diff),
        f("bpf_csum_diff in XDP", "4.6"),
    ),
    (
        Probe::Helper(XDP, libbpf_sys::BPF_FUNC_ktime_get_coarse_ns),
        f("bpf_ktime_get_coarse_ns in XDP", "5.11"),
    ),
    (
        Probe::Helper(TC, libbpf_sys::BPF_FUNC_skb_load_bytes),
        f("bpf_skb_load_bytes in TC", "4.5"),
    ),
    (
        Probe::Helper(TC, libbpf_sys::BPF_FUNC_get_socket_cookie),
        f("bpf_get_socket_cookie in TC", "4.12"),
    ),
    (
        Probe::Helper(TC, libbpf_sys::BPF_FUNC_sk_fullsock),
        f("bpf_sk_fullsock in TC", "5.1"),
    ),
    (
        Probe::Helper(TC, libbpf_sys::BPF_FUNC_ktime_get_coarse_ns),
        f("bpf_ktime_get_coarse_ns in TC", "5.11"),
    ),
    (
        Probe::BtfIfAny("bpf_xdp_link", libbpf_sys::BTF_KIND_STRUCT),
        f("XDP BPF links", "5.9"),
    ),
    (
        Probe::Atomics,
        f(
            "BPF atomic fetch/exchange/compare-and-exchange instructions",
            "5.12",
        ),
    ),
];

/// The drop counters' tracepoints: without them the agent runs, without those counters.
const TRACEPOINTS: &[(Probe, Feature)] = &[
    (
        Probe::Btf("btf_trace_xdp_devmap_xmit", libbpf_sys::BTF_KIND_TYPEDEF),
        f("the BTF tracepoint xdp:xdp_devmap_xmit", "5.5"),
    ),
    (
        Probe::Btf("btf_trace_xdp_redirect_err", libbpf_sys::BTF_KIND_TYPEDEF),
        f("the BTF tracepoint xdp:xdp_redirect_err", "5.5"),
    ),
];

const fn f(what: &'static str, since: &'static str) -> Feature {
    Feature { what, since }
}

/// What start-up learned of the kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// The drop counters' tracepoints are there (XMIT_DROPPED, XMIT_ERROR can be counted).
    pub drop_counters: bool,
    /// Why not, when they are not: the missing tracepoints.
    pub drop_counters_missing: Vec<Feature>,
}

/// Probe everything; the one-line refusal when a required feature is missing, or when the
/// kernel would not answer (a probe that fails with an error proves nothing about the kernel).
pub fn require() -> Result<Kernel, String> {
    let release = kernel_release();
    // libbpf's type probes answer "no" when bpf() itself is refused (they only look at whether
    // a load worked), and its helper probe "yes": ask once directly whether we may load at all.
    if let Err(rc) = may_load() {
        return Err(refused_to_load(rc));
    }
    let btf = Btf::load();
    let mut missing = Vec::new();
    let mut unanswered = Vec::new();
    for (p, feature) in REQUIRED {
        match has(*p, &btf) {
            Answer::Yes => {}
            Answer::No => missing.push(*feature),
            Answer::Failed(rc) => unanswered.push((*feature, rc)),
        }
    }
    if !unanswered.is_empty() {
        return Err(unanswerable(&unanswered));
    }
    if !missing.is_empty() {
        return Err(refusal(&release, &missing));
    }
    let drop_counters_missing: Vec<Feature> = TRACEPOINTS
        .iter()
        .filter(|(p, _)| has(*p, &btf) != Answer::Yes)
        .map(|(_, feature)| *feature)
        .collect();
    debug!("kernel {release}: every feature the fast path needs is there");
    Ok(Kernel {
        release,
        drop_counters: drop_counters_missing.is_empty(),
        drop_counters_missing,
    })
}

/// Load the smallest XDP program there is (r0 = XDP_PASS; exit): Err(-errno) when bpf() is
/// refused for want of privilege (EPERM, EACCES) or not there at all (ENOSYS, a seccomp filter
/// may answer that too), which every probe would then take for a missing feature.
fn may_load() -> Result<(), i32> {
    const BPF_ALU64_MOV_K: u8 = 0xb7;
    const BPF_EXIT: u8 = 0x95;
    let prog = [
        insn(BPF_ALU64_MOV_K, 0, 0, 0, 2), // r0 = XDP_PASS
        insn(BPF_EXIT, 0, 0, 0, 0),
    ];
    let Err(fd) = load_xdp(&prog) else {
        return Ok(());
    };
    use nix::errno::Errno;
    match Errno::from_raw(-fd) {
        Errno::EPERM | Errno::EACCES | Errno::ENOSYS => Err(fd),
        // anything else (EINVAL: no XDP at all) is for the probes to name
        _ => Ok(()),
    }
}

/// The refusal when bpf() itself is refused.
pub fn refused_to_load(rc: i32) -> String {
    let err = nix::errno::Errno::from_raw(-rc);
    format!(
        "could not ask the kernel what it offers: loading a two-instruction XDP program failed \
         ({err}); the agent needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root), and no \
         seccomp or LSM policy that forbids bpf()"
    )
}

/// The refusal when the kernel refused to be asked (bpf() failing with EPERM under a seccomp
/// or LSM policy, or without the capabilities): not "this kernel lacks", which would send the
/// operator after a new kernel.
pub fn unanswerable(failed: &[(Feature, i32)]) -> String {
    let (first, rc) = failed[0];
    let err = nix::errno::Errno::from_raw(-rc);
    format!(
        "could not ask the kernel whether it has {} ({} probe(s) failed; the first, {}: {err}): \
         the agent needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root), and no seccomp or \
         LSM policy that forbids bpf()",
        failed
            .iter()
            .map(|(f, _)| f.what)
            .collect::<Vec<_>>()
            .join(", "),
        failed.len(),
        first.what,
    )
}

/// The refusal: every missing feature with the version that brought it, and the newest of those
/// versions as the one to run.
pub fn refusal(release: &str, missing: &[Feature]) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|m| format!("{} (Linux {})", m.what, m.since))
        .collect();
    let newest = missing
        .iter()
        .map(|m| m.since)
        .max_by_key(|v| version_key(v))
        .unwrap_or("?");
    format!(
        "this kernel (Linux {release}) lacks what the fast path needs: {}; run turn-bpf on \
         Linux {newest} or later (README: \"Kernel\")",
        names.join(", ")
    )
}

/// `5.18` → (5, 18), for ordering versions.
fn version_key(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Yes,
    No,
    /// The probe itself failed (negative errno): nothing is known.
    Failed(i32),
}

impl Answer {
    /// libbpf's probes answer 1 (supported), 0 (not) or a negative error.
    fn of_libbpf(rc: i32) -> Answer {
        match rc {
            1 => Answer::Yes,
            0 => Answer::No,
            rc if rc < 0 => Answer::Failed(rc),
            _ => Answer::No,
        }
    }
}

fn has(p: Probe, btf: &Btf) -> Answer {
    let known = |yes: bool| if yes { Answer::Yes } else { Answer::No };
    // SAFETY (all three): plain calls with no options; libbpf loads a tiny program or creates a
    // tiny map, frees it and answers 1 (supported), 0 (not) or a negative error.
    let rc = match p {
        Probe::ProgType(t) => unsafe {
            libbpf_sys::libbpf_probe_bpf_prog_type(t, std::ptr::null())
        },
        Probe::MapType(t) => unsafe { libbpf_sys::libbpf_probe_bpf_map_type(t, std::ptr::null()) },
        Probe::Helper(t, h) => unsafe {
            libbpf_sys::libbpf_probe_bpf_helper(t, h, std::ptr::null())
        },
        Probe::Btf(name, kind) => return known(btf.has(name, kind)),
        Probe::BtfIfAny(name, kind) => return known(btf.0.is_null() || btf.has(name, kind)),
        Probe::Atomics => return atomics(),
    };
    if rc < 0 {
        debug!("probing {p:?}: error {rc}");
    }
    Answer::of_libbpf(rc)
}

/// The kernel's BTF, if it has any.
struct Btf(*mut libbpf_sys::btf);

impl Btf {
    fn load() -> Btf {
        // SAFETY: returns a new object or an error pointer/NULL, checked in `has`.
        let p = unsafe { libbpf_sys::btf__load_vmlinux_btf() };
        // SAFETY: libbpf_get_error accepts any pointer libbpf returned.
        if p.is_null() || unsafe { libbpf_sys::libbpf_get_error(p.cast()) } != 0 {
            debug!("the kernel's BTF could not be loaded");
            return Btf(std::ptr::null_mut());
        }
        Btf(p)
    }

    fn has(&self, name: &str, kind: u32) -> bool {
        if self.0.is_null() {
            return false;
        }
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: a valid BTF object and NUL-terminated name.
        unsafe { libbpf_sys::btf__find_by_name_kind(self.0, c.as_ptr(), kind) > 0 }
    }
}

impl Drop for Btf {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the object came from btf__load_vmlinux_btf and is freed once.
            unsafe { libbpf_sys::btf__free(self.0) };
        }
    }
}

/// One instruction of the atomics probe.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> libbpf_sys::bpf_insn {
    let mut i = libbpf_sys::bpf_insn {
        code,
        off,
        imm,
        ..Default::default()
    };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

/// Does the verifier take a 64-bit atomic compare-and-exchange (BPF_ATOMIC with BPF_CMPXCHG,
/// Linux 5.12, the same series as fetch-and-add with a result and exchange)?
fn atomics() -> Answer {
    const BPF_ALU64_MOV_K: u8 = 0xb7;
    const BPF_STX_MEM_DW: u8 = 0x7b;
    const BPF_STX_ATOMIC_DW: u8 = 0xdb;
    const BPF_CMPXCHG: i32 = 0xf0 | 0x01;
    const BPF_EXIT: u8 = 0x95;
    let prog = [
        insn(BPF_ALU64_MOV_K, 0, 0, 0, 0),               // r0 = 0
        insn(BPF_STX_MEM_DW, 10, 0, -8, 0),              // *(u64 *)(r10 - 8) = r0
        insn(BPF_ALU64_MOV_K, 1, 0, 0, 1),               // r1 = 1
        insn(BPF_STX_ATOMIC_DW, 10, 1, -8, BPF_CMPXCHG), // r0 = cmpxchg(r10 - 8, r0, r1)
        insn(BPF_ALU64_MOV_K, 0, 0, 0, 2),               // r0 = XDP_PASS
        insn(BPF_EXIT, 0, 0, 0, 0),
    ];
    match load_xdp(&prog) {
        Ok(()) => Answer::Yes,
        // The verifier refuses an unknown instruction with EINVAL; EPERM is about us.
        Err(rc) if rc == -(nix::errno::Errno::EPERM as i32) => Answer::Failed(rc),
        Err(rc) => {
            debug!("the atomics probe was refused: error {rc}");
            Answer::No
        }
    }
}

/// Load `prog` as an XDP program and free it at once: Err(-errno) when the kernel refuses it.
fn load_xdp(prog: &[libbpf_sys::bpf_insn]) -> Result<(), i32> {
    let license = c"GPL";
    // SAFETY: a valid instruction array of the length given; no options.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            XDP,
            std::ptr::null(),
            license.as_ptr(),
            prog.as_ptr(),
            prog.len() as _,
            std::ptr::null_mut(),
        )
    };
    if fd < 0 {
        return Err(fd);
    }
    // SAFETY: the kernel just gave us this fd; dropping it frees the program.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_every_missing_feature_and_the_version_to_run() {
        let missing = [
            f("bpf_xdp_load_bytes", "5.18"),
            f("XDP BPF links", "5.9"),
            f("bpf_ktime_get_coarse_ns in XDP", "5.11"),
        ];
        assert_eq!(
            refusal("5.4.0-150-generic", &missing),
            "this kernel (Linux 5.4.0-150-generic) lacks what the fast path needs: \
             bpf_xdp_load_bytes (Linux 5.18), XDP BPF links (Linux 5.9), \
             bpf_ktime_get_coarse_ns in XDP (Linux 5.11); run turn-bpf on Linux 5.18 or later \
             (README: \"Kernel\")"
        );
        let one = refusal("5.15.0", &[f("bpf_xdp_load_bytes", "5.18")]);
        assert!(!one.contains('\n'), "{one}");
        assert!(one.ends_with("run turn-bpf on Linux 5.18 or later (README: \"Kernel\")"));
    }

    #[test]
    fn a_failed_probe_is_not_a_missing_feature() {
        assert_eq!(Answer::of_libbpf(1), Answer::Yes);
        assert_eq!(Answer::of_libbpf(0), Answer::No);
        assert_eq!(Answer::of_libbpf(-1), Answer::Failed(-1));
        let line = unanswerable(&[(f("XDP programs", "4.8"), -1), (f("hash maps", "3.19"), -1)]);
        assert!(!line.contains('\n'), "{line}");
        assert!(!line.contains("lacks"), "{line}");
        assert!(
            line.starts_with(
                "could not ask the kernel whether it has XDP programs, hash maps (2 probe(s) \
                 failed; the first, XDP programs: EPERM: Operation not permitted)"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_refused_bpf_call_is_named_as_such() {
        let line = refused_to_load(-1);
        assert!(!line.contains('\n') && !line.contains("lacks"), "{line}");
        assert!(line.contains("(EPERM: Operation not permitted)"), "{line}");
    }

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("5.18") > version_key("5.9"));
        assert!(version_key("5.9") > version_key("4.18"));
        assert!(version_key("6.1") > version_key("5.18"));
    }

    #[test]
    fn every_required_feature_names_its_version() {
        for (_, feature) in REQUIRED.iter().chain(TRACEPOINTS) {
            assert!(version_key(feature.since) >= (3, 19), "{feature:?}");
        }
        // The newest of them is the minimum the README states.
        let newest = REQUIRED
            .iter()
            .map(|(_, f)| f.since)
            .max_by_key(|v| version_key(v))
            .unwrap();
        assert_eq!(newest, "5.18");
    }

    /// On the machine the tests run on, everything is there (the lab tests load the programs).
    #[test]
    fn this_kernel_has_everything() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: probing the kernel needs root");
            return;
        }
        let k = require().unwrap_or_else(|e| panic!("{e}"));
        assert!(k.drop_counters, "{:?}", k.drop_counters_missing);
    }
}
