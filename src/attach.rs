//! Attaching and detaching: XDP programs as BPF links, the TC egress snooper as a clsact filter,
//! and the forwarding sysctls the fast path's FIB lookups need.
//!
//! [`Attachments`] owns exactly what this process attached and undoes exactly that on drop:
//! XDP links are closed, our TC filter is removed (never anyone else's), a clsact qdisc is removed
//! only if we created it and nothing else uses it, and forwarding settings we changed are restored.
//! If the process is killed with SIGKILL, the XDP links vanish with it; the TC filter stays and
//! `turn-bpf --detach IFACE` removes it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{TcHook, TcHookBuilder, TC_EGRESS};
use log::{debug, info, warn};

use crate::cli::XdpMode;

/// Handle and priority of our TC filter: fixed, so `--detach` finds it after a SIGKILL.
pub const TC_HANDLE: u32 = 0x7462; // "tb"
pub const TC_PRIORITY: u32 = 0x7462;
/// Names of our programs, to recognise them on an interface.
pub const XDP_PROG_NAME: &str = "xdp_turn";
pub const TC_PROG_NAME: &str = "tc_snoop";

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The ifindex of `name`, or a clear error.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| anyhow!("'{name}' is not a valid interface name"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { nix::libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface named {name}");
    }
    Ok(idx)
}

/// The XDP program currently on `ifindex`, if any: (program id, mode name).
pub fn xdp_attached(ifindex: u32) -> Result<Option<(u32, &'static str)>> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: opts is a properly sized, initialised options struct.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc)).context("querying XDP state");
    }
    let mode = match u32::from(opts.attach_mode) {
        libbpf_sys::XDP_ATTACHED_DRV => "native",
        libbpf_sys::XDP_ATTACHED_SKB => "generic",
        libbpf_sys::XDP_ATTACHED_HW => "offload",
        libbpf_sys::XDP_ATTACHED_MULTI => "multi",
        _ => return Ok(None),
    };
    Ok(Some((opts.prog_id, mode)))
}

/// The name of a loaded BPF program by id (None if it is gone).
pub fn prog_name(id: u32) -> Option<String> {
    // SAFETY: plain syscall wrappers; the fd is owned right away.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return None;
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// One XDP attachment: a BPF link; closing it detaches the program.
pub struct XdpLink {
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    _link: OwnedFd,
}

fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags,
        ..Default::default()
    };
    // SAFETY: valid program fd and options struct.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_XDP, &opts)
    };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attach `prog` to `iface` in `mode`. Refuses an interface that already has an XDP program.
pub fn attach_xdp(prog: BorrowedFd<'_>, iface: &str, mode: XdpMode) -> Result<XdpLink> {
    let idx = ifindex(iface)?;
    if let Some((id, m)) = xdp_attached(idx)? {
        let owner = match prog_name(id) {
            Some(n) if n == XDP_PROG_NAME => " (another turn-bpf is running there)".to_string(),
            Some(n) => format!(" ({n})"),
            None => String::new(),
        };
        bail!("{iface} already has an XDP program attached: id {id}, {m} mode{owner}");
    }
    let try_mode = |flags: u32, name: &'static str| {
        xdp_link_create(prog, idx, flags).map(|fd| XdpLink {
            iface: iface.to_string(),
            ifindex: idx,
            mode: name,
            _link: fd,
        })
    };
    match mode {
        XdpMode::Native => try_mode(XDP_FLAGS_DRV_MODE, "native")
            .with_context(|| format!("attaching XDP to {iface} in native mode")),
        XdpMode::Generic => try_mode(XDP_FLAGS_SKB_MODE, "generic")
            .with_context(|| format!("attaching XDP to {iface} in generic mode")),
        XdpMode::Auto => match try_mode(XDP_FLAGS_DRV_MODE, "native") {
            Ok(l) => Ok(l),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                Err(e).with_context(|| format!("attaching XDP to {iface}: the interface is busy"))
            }
            Err(e) => {
                debug!("native XDP on {iface} refused ({e}); trying generic");
                try_mode(XDP_FLAGS_SKB_MODE, "generic")
                    .with_context(|| format!("attaching XDP to {iface} (native: {e})"))
            }
        },
    }
}

/// Our TC egress filter on one interface.
pub struct TcFilter {
    pub iface: String,
    pub ifindex: u32,
    hook: TcHook,
    /// We created the clsact qdisc (it did not exist before).
    created_qdisc: bool,
}

fn clsact_hook(prog: BorrowedFd<'_>, idx: u32) -> TcHook {
    TcHookBuilder::new(prog)
        .ifindex(idx as i32)
        .replace(false)
        .handle(TC_HANDLE)
        .priority(TC_PRIORITY)
        .hook(TC_EGRESS)
}

/// Create the clsact qdisc if needed (remembering whether we did) and attach our filter at its
/// fixed handle/priority. Refuses if a filter already sits there.
pub fn attach_tc(prog: BorrowedFd<'_>, iface: &str) -> Result<TcFilter> {
    let idx = ifindex(iface)?;
    let mut hook = clsact_hook(prog, idx);
    let mut raw = libbpf_sys::bpf_tc_hook {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as _,
        ifindex: idx as i32,
        attach_point: libbpf_sys::BPF_TC_EGRESS,
        ..Default::default()
    };
    // SAFETY: valid hook struct.
    let rc = unsafe { libbpf_sys::bpf_tc_hook_create(&mut raw) };
    let created_qdisc = match rc {
        0 => true,
        e if -e == nix::libc::EEXIST => false,
        e => {
            return Err(io::Error::from_raw_os_error(-e))
                .with_context(|| format!("creating the clsact qdisc on {iface}"))
        }
    };
    if let Ok(id) = hook.query() {
        let who = prog_name(id).unwrap_or_else(|| format!("program id {id}"));
        if created_qdisc {
            remove_clsact_if_empty(&mut hook, iface);
        }
        bail!(
            "{iface} already has a TC egress filter at handle {TC_HANDLE:#x} priority \
             {TC_PRIORITY:#x} ({who}); another turn-bpf, or one killed without detaching \
             (see turn-bpf --detach {iface})"
        );
    }
    if let Err(e) = hook.attach() {
        if created_qdisc {
            remove_clsact_if_empty(&mut hook, iface);
        }
        return Err(e).with_context(|| format!("attaching the TC egress snooper to {iface}"));
    }
    Ok(TcFilter {
        iface: iface.to_string(),
        ifindex: idx,
        hook,
        created_qdisc,
    })
}

/// True when `tc` lists no filter in either direction of `iface`'s clsact qdisc.
fn clsact_is_empty(iface: &str) -> bool {
    ["ingress", "egress"].iter().all(|dir| {
        Command::new("tc")
            .args(["filter", "show", "dev", iface, dir])
            .output()
            .map(|o| o.status.success() && o.stdout.iter().all(|b| b.is_ascii_whitespace()))
            .unwrap_or(false)
    })
}

fn remove_clsact_if_empty(hook: &mut TcHook, iface: &str) {
    if !clsact_is_empty(iface) {
        debug!("leaving the clsact qdisc on {iface}: other filters use it");
        return;
    }
    let mut both = *hook;
    both.attach_point(libbpf_rs::TC_EGRESS | libbpf_rs::TC_INGRESS);
    if let Err(e) = both.destroy() {
        warn!("could not remove the clsact qdisc we created on {iface}: {e}");
    }
}

impl TcFilter {
    fn detach(&mut self) {
        match self.hook.detach() {
            Ok(()) => info!("detached TC egress snooper from {}", self.iface),
            Err(e) => warn!("detaching the TC filter from {}: {e}", self.iface),
        }
        if self.created_qdisc {
            remove_clsact_if_empty(&mut self.hook, &self.iface);
        }
    }
}

/// `--detach`: remove a TC filter of ours left behind by a killed agent.
/// Returns a line describing what was done on `iface`.
pub fn detach_leftovers(iface: &str) -> Result<String> {
    let idx = ifindex(iface)?;
    let mut out = Vec::new();
    // Any program fd will do for building the hook; detach identifies the filter by
    // handle and priority. Borrow stdin's fd number only as a placeholder, it is never used.
    // SAFETY: the placeholder fd is not read; bpf_tc_query/detach ignore prog_fd.
    let placeholder = unsafe { BorrowedFd::borrow_raw(0) };
    let mut hook = clsact_hook(placeholder, idx);
    match hook.query() {
        Ok(id) => {
            let name = prog_name(id);
            if name.as_deref() != Some(TC_PROG_NAME) {
                bail!(
                    "the TC filter at handle {TC_HANDLE:#x} on {iface} is {}, not turn-bpf's: \
                     left alone",
                    name.unwrap_or_else(|| format!("program id {id}"))
                );
            }
            hook.detach()
                .with_context(|| format!("removing the TC filter from {iface}"))?;
            out.push("removed the TC egress snooper".to_string());
            remove_clsact_if_empty(&mut hook, iface);
        }
        Err(_) => out.push("no turn-bpf TC filter".to_string()),
    }
    match xdp_attached(idx)? {
        Some((id, mode)) if prog_name(id).as_deref() == Some(XDP_PROG_NAME) => out.push(format!(
            "XDP program {id} ({mode}) is still attached: a turn-bpf process still holds it \
             (stop that process)"
        )),
        _ => out.push("no turn-bpf XDP program".to_string()),
    }
    Ok(format!("{iface}: {}", out.join("; ")))
}

/// The forwarding sysctl of one interface.
pub fn forwarding_path(iface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/forwarding")
}

pub fn forwarding_enabled(iface: &str) -> Result<bool> {
    let path = forwarding_path(iface);
    let v = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(v.trim() == "1")
}

fn set_forwarding(iface: &str, on: bool) -> Result<()> {
    let path = forwarding_path(iface);
    fs::write(&path, if on { "1" } else { "0" }).with_context(|| format!("writing {path}"))
}

/// Everything this process attached or changed, undone on drop in reverse order.
#[derive(Default)]
pub struct Attachments {
    pub xdp: Vec<XdpLink>,
    pub tc: Vec<TcFilter>,
    forwarding_enabled_by_us: Vec<String>,
}

impl Attachments {
    /// Check (or with `enable`, switch on) forwarding on every interface.
    pub fn ensure_forwarding(&mut self, ifaces: &[String], enable: bool) -> Result<()> {
        let off: Vec<&String> = ifaces
            .iter()
            .filter(|i| !forwarding_enabled(i).unwrap_or(false))
            .collect();
        if off.is_empty() {
            return Ok(());
        }
        if !enable {
            let names: Vec<&str> = off.iter().map(|s| s.as_str()).collect();
            bail!(
                "IPv4 forwarding is off on {}: the fast path's FIB lookups need it \
                 (net.ipv4.conf.<if>.forwarding=1). Pass --enable-forwarding, or set it yourself \
                 and make sure your firewall's FORWARD policy is what you want (README: \
                 \"Forwarding and firewalling\")",
                names.join(", ")
            );
        }
        for iface in off {
            set_forwarding(iface, true)?;
            info!("enabled IPv4 forwarding on {iface} (restored on exit)");
            self.forwarding_enabled_by_us.push(iface.clone());
        }
        Ok(())
    }

    pub fn detach_all(&mut self) {
        for mut f in self.tc.drain(..).rev() {
            f.detach();
        }
        for l in self.xdp.drain(..).rev() {
            info!("detached XDP from {}", l.iface);
            drop(l);
        }
        for iface in self.forwarding_enabled_by_us.drain(..) {
            match set_forwarding(&iface, false) {
                Ok(()) => info!("restored IPv4 forwarding off on {iface}"),
                Err(e) => warn!("restoring forwarding on {iface}: {e:#}"),
            }
        }
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The raw fd of a program, for the attach calls.
pub fn prog_fd<P: AsFd>(p: &P) -> BorrowedFd<'_> {
    p.as_fd()
}
