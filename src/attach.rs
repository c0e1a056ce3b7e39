//! Attaching and detaching: XDP programs as BPF links, the TC egress snooper as a clsact filter,
//! and the forwarding sysctls the fast path's FIB lookups need.
//!
//! [`Attachments`] owns exactly what this process attached and undoes exactly that on drop:
//! XDP links are closed, our TC filter is removed (never anyone else's), a clsact qdisc is removed
//! only if we created it and nothing else uses it, and forwarding settings we changed are restored.
//! If the process is killed with SIGKILL, the XDP links vanish with it; the TC filter stays and
//! `turn-bpf detach IFACE` removes it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{TcHook, TcHookBuilder, TC_EGRESS};
use log::{debug, info, warn};

use crate::cli::XdpMode;

/// Handle and priority of our TC filter: fixed, so `turn-bpf detach` finds it after a SIGKILL.
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

/// The kernel's id of the program behind `prog`.
pub fn prog_id(prog: BorrowedFd<'_>) -> Result<u32> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a properly sized struct and len says so.
    let rc = unsafe {
        libbpf_sys::bpf_obj_get_info_by_fd(
            prog.as_raw_fd(),
            (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc)).context("reading a program's id");
    }
    Ok(info.id)
}

/// Processes other than this one that hold a file descriptor of BPF program `id` (a running
/// agent holds its programs; a filter left behind by a killed one is held by nobody).
pub fn prog_holders(id: u32) -> Vec<u32> {
    let me = std::process::id();
    let want = format!("prog_id:\t{id}");
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    fs::read_to_string(fd.path())
                        .is_ok_and(|t| t.lines().any(|l| l.trim_end() == want))
                })
            })
        })
        .collect();
    out.sort_unstable();
    out
}

/// One XDP attachment: a BPF link; closing it detaches the program.
pub struct XdpLink {
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    prog_id: u32,
    _link: OwnedFd,
    /// Where the link is pinned (--pin-path): detaching unpins it.
    pin: Option<std::path::PathBuf>,
}

impl XdpLink {
    /// Pin the link at `path`: it then outlives this process.
    pub fn pin(&mut self, path: &std::path::Path) -> Result<()> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: a link fd we own and a NUL-terminated path.
        let rc = unsafe { libbpf_sys::bpf_obj_pin(self._link.as_raw_fd(), c.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::from_raw_os_error(-rc))
                .with_context(|| format!("pinning the XDP link at {}", path.display()));
        }
        self.pin = Some(path.to_path_buf());
        Ok(())
    }
}

/// Adopt the XDP link pinned at `pin` on `iface` (--pin-path): its program is swapped for `prog`
/// in one step (`bpf_link_update`), so no packet meets an interface without one. A pinned link
/// that is no longer on `iface` (the interface went away and came back) is unpinned: None.
pub fn adopt_xdp(
    prog: BorrowedFd<'_>,
    iface: &str,
    pin: &std::path::Path,
) -> Result<Option<XdpLink>> {
    let idx = ifindex(iface)?;
    let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path; the fd is owned right away.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("opening the pinned XDP link {}", pin.display()));
    }
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = libbpf_sys::bpf_link_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info is a properly sized struct and len says so.
    let rc = unsafe {
        libbpf_sys::bpf_obj_get_info_by_fd(
            link.as_raw_fd(),
            (&mut info as *mut libbpf_sys::bpf_link_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc)).context("reading the pinned link");
    }
    // SAFETY: the xdp member is the one of an XDP link (checked by its type).
    let link_ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
    if info.type_ != libbpf_sys::BPF_LINK_TYPE_XDP {
        bail!("{} is not an XDP link", pin.display());
    }
    if link_ifindex != idx {
        warn!(
            "the XDP link pinned for {iface} is not on it any more (ifindex {link_ifindex}): \
             attaching anew"
        );
        fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))?;
        return Ok(None);
    }
    // SAFETY: valid link and program fds; no options.
    let rc = unsafe {
        libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null())
    };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc))
            .with_context(|| format!("swapping the XDP program on {iface}"));
    }
    let mode = xdp_attached(idx)?.map_or("?", |(_, m)| m);
    Ok(Some(XdpLink {
        iface: iface.to_string(),
        ifindex: idx,
        mode,
        prog_id: prog_id(prog)?,
        _link: link,
        pin: Some(pin.to_path_buf()),
    }))
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

/// The XDP mode the kernel is asked for on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Driver mode: the fast one; needs the driver's XDP support.
    Native,
    /// skb mode: works on any interface.
    Generic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    fn flags(self) -> u32 {
        match self {
            Mode::Native => XDP_FLAGS_DRV_MODE,
            Mode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The modes to try, in order, each on every interface at once. Modes are never mixed: a
/// native-mode ingress that redirects into an interface attached in generic mode (which has no
/// `ndo_xdp_xmit` for it) loses the frame.
pub fn xdp_mode_plan(requested: XdpMode) -> &'static [Mode] {
    match requested {
        XdpMode::Auto => &[Mode::Native, Mode::Generic],
        XdpMode::Native => &[Mode::Native],
        XdpMode::Generic => &[Mode::Generic],
    }
}

/// Whether an attach failure is the interface refusing the mode itself (the driver cannot do it),
/// so the next mode of the plan may be tried: not a busy interface, not one that already has a
/// program, nothing that is not the kernel's answer.
pub fn refused_mode(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
        .is_some_and(|errno| errno != nix::libc::EBUSY && errno != nix::libc::EEXIST)
}

/// Attach with `attach` to every interface in the first mode of `requested`'s plan that every
/// interface takes. When one refuses a mode, whatever was attached in it is detached (dropped)
/// before the next mode is tried on all of them, and a warning says so. `stop` is asked before
/// every attach: `Ok(None)` when it said stop (with everything attached so far dropped again).
pub fn attach_uniform<L>(
    ifaces: &[String],
    requested: XdpMode,
    stop: &dyn Fn() -> bool,
    mut attach: impl FnMut(&str, Mode) -> Result<L>,
) -> Result<Option<(Mode, Vec<L>)>> {
    let plan = xdp_mode_plan(requested);
    for (i, &mode) in plan.iter().enumerate() {
        let next = plan.get(i + 1).copied();
        let mut links = Vec::new();
        let mut refused = None;
        for iface in ifaces {
            if stop() {
                return Ok(None);
            }
            match attach(iface, mode) {
                Ok(l) => links.push(l),
                Err(e) if next.is_some() && refused_mode(&e) => {
                    refused = Some((iface, e));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let Some((iface, e)) = refused else {
            return Ok(Some((mode, links)));
        };
        drop(links);
        warn!(
            "{iface} refuses {} XDP ({e:#}): attaching every interface in {} mode instead (a \
             {} interface cannot redirect into one in {} mode)",
            mode.name(),
            next.map_or("?", Mode::name),
            mode.name(),
            next.map_or("?", Mode::name),
        );
    }
    bail!("no XDP mode left to try")
}

/// Attach `prog` to `iface` in `mode`. Refuses an interface that already has an XDP program.
pub fn attach_xdp(prog: BorrowedFd<'_>, iface: &str, mode: Mode) -> Result<XdpLink> {
    let idx = ifindex(iface)?;
    if let Some((id, m)) = xdp_attached(idx)? {
        let owner = match prog_name(id) {
            Some(n) if n == XDP_PROG_NAME => " (another turn-bpf is running there, or left it \
                                               pinned: see turn-bpf detach --pin-path)"
                .to_string(),
            Some(n) => format!(" ({n})"),
            None => String::new(),
        };
        bail!("{iface} already has an XDP program attached: id {id}, {m} mode{owner}");
    }
    let fd = match xdp_link_create(prog, idx, mode.flags()) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
            return Err(e).with_context(|| {
                format!(
                    "attaching XDP to {iface} in {} mode: the interface is busy",
                    mode.name()
                )
            })
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("attaching XDP to {iface} in {} mode", mode.name()))
        }
    };
    Ok(XdpLink {
        iface: iface.to_string(),
        ifindex: idx,
        mode: mode.name(),
        prog_id: prog_id(prog)?,
        _link: fd,
        pin: None,
    })
}

/// Our TC egress filter on one interface.
pub struct TcFilter {
    pub iface: String,
    pub ifindex: u32,
    prog_id: u32,
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
             (see turn-bpf detach {iface})"
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
        prog_id: prog_id(prog)?,
        hook,
        created_qdisc,
    })
}

/// Is turn-bpf's XDP program on `iface`?
pub fn our_xdp_attached(iface: &str) -> bool {
    ifindex(iface).and_then(xdp_attached).is_ok_and(
        |x| matches!(x, Some((id, _)) if prog_name(id).as_deref() == Some(XDP_PROG_NAME)),
    )
}

/// Is turn-bpf's snooper at its handle and priority on `iface`?
pub fn snooper_present(iface: &str) -> bool {
    let Ok(idx) = ifindex(iface) else {
        return false;
    };
    // SAFETY: as in detach_leftovers: the placeholder fd is never used by the query.
    let placeholder = unsafe { BorrowedFd::borrow_raw(0) };
    let mut hook = clsact_hook(placeholder, idx);
    hook.query()
        .is_ok_and(|id| prog_name(id).as_deref() == Some(TC_PROG_NAME))
}

/// Replace the program of the snooper an earlier agent left at our handle and priority on
/// `iface` (--pin-path) in one step (`BPF_TC_F_REPLACE`). None when there is none to replace.
pub fn replace_tc(prog: BorrowedFd<'_>, iface: &str) -> Result<Option<TcFilter>> {
    let idx = ifindex(iface)?;
    let mut hook = clsact_hook(prog, idx);
    let Ok(id) = hook.query() else {
        return Ok(None);
    };
    if prog_name(id).as_deref() != Some(TC_PROG_NAME) {
        return Ok(None); // attach_tc refuses it, naming it
    }
    hook.replace(true);
    hook.attach()
        .with_context(|| format!("replacing the TC egress snooper's program on {iface}"))?;
    hook.replace(false);
    Ok(Some(TcFilter {
        iface: iface.to_string(),
        ifindex: idx,
        prog_id: prog_id(prog)?,
        hook,
        created_qdisc: true,
    }))
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

/// `turn-bpf detach`: remove a TC filter of ours left behind by a killed agent.
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
            // The snooper of a running agent: removing it would leave that agent relaying
            // blind. A running agent holds its program (and its XDP link on this interface).
            let holders = prog_holders(id);
            let xdp_live = matches!(xdp_attached(idx)?,
                Some((x, _)) if prog_name(x).as_deref() == Some(XDP_PROG_NAME));
            if !holders.is_empty() || xdp_live {
                let who = holders.first().map_or_else(
                    || "a running turn-bpf".to_string(),
                    |pid| format!("running turn-bpf process {pid}"),
                );
                bail!(
                    "the TC egress snooper on {iface} belongs to {who}: left alone (stop that \
                     process with SIGINT or SIGTERM and it detaches itself)"
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

/// An address family of the forwarding sysctls: `bpf_fib_lookup` checks the one of the packet's
/// output family (an IPv6 output needs `net.ipv6.conf.<ingress>.forwarding`, whatever came in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// The forwarding sysctl of one interface (or `all`) in one family.
pub fn forwarding_path(family: Family, iface: &str) -> String {
    format!("/proc/sys/net/{}/conf/{iface}/forwarding", family.dir())
}

/// The `accept_ra` sysctl of one interface.
pub fn accept_ra_path(iface: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{iface}/accept_ra")
}

fn read_sysctl(path: &str) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {path}"))
}

pub fn forwarding_enabled(family: Family, iface: &str) -> Result<bool> {
    Ok(read_sysctl(&forwarding_path(family, iface))? == "1")
}

fn set_forwarding(family: Family, iface: &str, on: bool) -> Result<()> {
    write_sysctl(&forwarding_path(family, iface), if on { "1" } else { "0" })
}

/// Why IPv6 needs no forwarding check on `iface`, if it does not: the host has no IPv6 at all
/// (`/proc/sys/net/ipv6` missing), or IPv6 is disabled on the interface. No IPv6 output can
/// leave such an interface, so its FIB lookups never matter.
pub fn ipv6_absent(iface: &str) -> Option<String> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Some("this host has no IPv6 (/proc/sys/net/ipv6 is missing)".into());
    }
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    match read_sysctl(&path).as_deref() {
        Ok("0") => None,
        Ok(_) => Some(format!("IPv6 is disabled on {iface} ({path})")),
        Err(_) => Some(format!("{iface} has no IPv6 settings ({path} is missing)")),
    }
}

/// What start-up does about forwarding in one family on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardingCheck {
    /// Already on, or the family does not exist there: nothing to do.
    Fine,
    /// Off: refuse to start, or with `--enable-forwarding` switch it on.
    Off,
}

/// The start-up decision from the interface's forwarding now (`None`: the family is absent).
pub fn forwarding_check(on: Option<bool>) -> ForwardingCheck {
    match on {
        None | Some(true) => ForwardingCheck::Fine,
        Some(false) => ForwardingCheck::Off,
    }
}

/// Whether enabling IPv6 forwarding on an interface must also set `accept_ra=2` there: with
/// forwarding on, Linux takes Router Advertisements only with `accept_ra=2`, so an interface
/// that took them (`1`) would lose its RA-learned default route and prefixes. `0` (takes none)
/// and `2` (takes them anyway) are left as they are.
pub fn accept_ra_needs_2(accept_ra: &str) -> bool {
    accept_ra.trim() == "1"
}

/// The refusal when forwarding is off and `--enable-forwarding` was not given.
pub fn forwarding_refusal(off: &[(Family, String)]) -> String {
    let mut parts = Vec::new();
    let mut sysctls = Vec::new();
    for family in [Family::V4, Family::V6] {
        let names: Vec<&str> = off
            .iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, i)| i.as_str())
            .collect();
        if names.is_empty() {
            continue;
        }
        parts.push(format!(
            "{} forwarding is off on {}",
            family.name(),
            names.join(", ")
        ));
        sysctls.push(format!("net.{}.conf.<if>.forwarding=1", family.dir()));
    }
    format!(
        "{}: the fast path's FIB lookups need it ({}). Pass --enable-forwarding, or set it \
         yourself and make sure your firewall's FORWARD policy is what you want (README: \
         \"Forwarding and firewalling\")",
        parts.join(", and "),
        sysctls.join(", ")
    )
}

/// Egress programs that run before the snooper on `iface`, or may: tcx programs (they run
/// before any clsact filter), clsact egress filters at a lower preference number than ours, and
/// other bpf filters at ours. If one of them ends classification, the snooper misses the
/// server's answers. An error when it cannot be told (no `tc`, no JSON from it).
pub fn egress_before_snooper(iface: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let idx = ifindex(iface)?;
    let mut ids = [0u32; 64];
    let mut opts = libbpf_sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as _,
        prog_ids: ids.as_mut_ptr(),
        ..Default::default()
    };
    opts.__bindgen_anon_1.prog_cnt = ids.len() as u32;
    // SAFETY: a properly sized options struct whose id array holds prog_cnt entries.
    let rc = unsafe {
        libbpf_sys::bpf_prog_query_opts(idx as i32, libbpf_sys::BPF_TCX_EGRESS, &mut opts)
    };
    if rc == 0 {
        // SAFETY: prog_cnt is what the kernel filled in.
        let n = unsafe { opts.__bindgen_anon_1.prog_cnt } as usize;
        for id in &ids[..n.min(ids.len())] {
            out.push(format!("tcx egress program {id}"));
        }
    }
    let listing = Command::new("tc")
        .args(["-j", "filter", "show", "dev", iface, "egress"])
        .output()
        .with_context(|| format!("running tc to list the egress filters of {iface}"))?;
    let text = String::from_utf8_lossy(&listing.stdout);
    if !listing.status.success() || !text.trim_start().starts_with('[') {
        bail!("cannot list the egress filters of {iface} (tc -j filter show)");
    }
    out.extend(filters_before(&text, TC_PRIORITY));
    Ok(out)
}

/// The clsact filters of `tc -j filter show` output that run before ours: a preference below
/// `ours`, or a bpf filter at `ours` with another handle; each once.
fn filters_before(tc_json: &str, ours: u32) -> Vec<String> {
    let our_handle = format!("{TC_HANDLE:#x}");
    let mut seen = Vec::new();
    for entry in tc_json.split("{\"protocol\"").skip(1) {
        let field = |name: &str| {
            let at = entry.find(&format!("\"{name}\":"))? + name.len() + 3;
            let rest = entry[at..].trim_start_matches('"');
            let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
            Some(rest[..end].to_string())
        };
        let (Some(pref), Some(kind)) = (field("pref"), field("kind")) else {
            continue;
        };
        let Ok(pref) = pref.parse::<u32>() else {
            continue;
        };
        let text = if pref < ours {
            format!("{kind} filter at preference {pref}")
        } else if pref == ours && field("handle").is_some_and(|h| h != our_handle) {
            format!("{kind} filter at preference {pref} (another handle)")
        } else {
            continue;
        };
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    seen
}

/// Interfaces of this network namespace that are up, not loopback, and not in `watched`: a TURN
/// request that reaches the server through one of them goes past the recorder unseen.
pub fn unwatched_interfaces(watched: &[String]) -> Vec<String> {
    use nix::net::if_::InterfaceFlags;
    // getifaddrs asks this network namespace over netlink (an entry per link, also one with no
    // address); /sys/class/net would show the namespace of whoever mounted /sys, which in a
    // container or under `ip netns exec` need not be ours.
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<String> = addrs
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .map(|a| a.interface_name)
        .filter(|name| !watched.contains(name))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Everything this process attached or changed, undone on drop in reverse order.
#[derive(Default)]
pub struct Attachments {
    pub xdp: Vec<XdpLink>,
    pub tc: Vec<TcFilter>,
    /// The drop counters' tracing programs, by tracepoint.
    pub tracing: Vec<(&'static str, libbpf_rs::Link)>,
    /// Forwarding we switched on, in the order we did.
    forwarding_enabled_by_us: Vec<(Family, String)>,
    /// Interfaces where we set `accept_ra` from 1 to 2 (with IPv6 forwarding).
    accept_ra_set_by_us: Vec<String>,
    /// Where the forwarding changes are recorded: cleared once they are restored.
    pub lock: Option<crate::runlock::RunLock>,
    /// The last `detach_all` restored every forwarding setting it had to (or had none).
    pub restored: bool,
}

impl Attachments {
    /// Check (or with `enable`, switch on) forwarding in both families on every interface.
    /// IPv6 is skipped (with a debug line) where the host or the interface has none.
    pub fn ensure_forwarding(&mut self, ifaces: &[String], enable: bool) -> Result<()> {
        let mut off: Vec<(Family, String)> = Vec::new();
        for family in [Family::V4, Family::V6] {
            for iface in ifaces {
                let on = if family == Family::V6 {
                    match ipv6_absent(iface) {
                        Some(why) => {
                            debug!("no IPv6 forwarding check on {iface}: {why}");
                            None
                        }
                        None => Some(forwarding_enabled(family, iface).unwrap_or(false)),
                    }
                } else {
                    Some(forwarding_enabled(family, iface).unwrap_or(false))
                };
                if forwarding_check(on) == ForwardingCheck::Off {
                    off.push((family, iface.clone()));
                }
            }
        }
        if off.is_empty() {
            return Ok(());
        }
        if !enable {
            bail!("{}", forwarding_refusal(&off));
        }
        for (family, iface) in off {
            if family == Family::V6 {
                // Before forwarding goes on: switching IPv6 forwarding on purges the RA-learned
                // default routes of every interface whose accept_ra is not 2.
                let path = accept_ra_path(&iface);
                if accept_ra_needs_2(&read_sysctl(&path).unwrap_or_default()) {
                    write_sysctl(&path, "2")?;
                    self.accept_ra_set_by_us.push(iface.clone());
                    info!(
                        "set accept_ra=2 on {iface} so that it keeps taking Router \
                         Advertisements with IPv6 forwarding on (restored on exit)"
                    );
                }
            }
            set_forwarding(family, &iface, true)?;
            info!(
                "enabled {} forwarding on {iface} (restored on exit)",
                family.name()
            );
            self.forwarding_enabled_by_us.push((family, iface));
        }
        Ok(())
    }

    /// Every hook still in place with our programs? Someone may have deleted the clsact qdisc,
    /// replaced a program or removed an interface. Returns what is missing.
    pub fn verify(&self) -> std::result::Result<(), String> {
        for l in &self.xdp {
            match ifindex(&l.iface).ok().filter(|i| *i == l.ifindex) {
                None => return Err(format!("interface {} went away", l.iface)),
                Some(idx) => match xdp_attached(idx) {
                    Ok(Some((id, _))) if id == l.prog_id => {}
                    _ => return Err(format!("the XDP fast path on {} is gone", l.iface)),
                },
            }
        }
        for f in &self.tc {
            if ifindex(&f.iface).ok() != Some(f.ifindex) {
                return Err(format!("interface {} went away", f.iface));
            }
            let mut hook = f.hook; // query needs a mutable handle; TcHook is a plain copy
            if hook.query().ok() != Some(f.prog_id) {
                return Err(format!(
                    "the TC egress snooper on {} is gone (was the clsact qdisc deleted?)",
                    f.iface
                ));
            }
            // Something that now runs before the snooper may hide the server's answers that
            // take state away, while what was learned before keeps relaying.
            match egress_before_snooper(&f.iface) {
                Ok(before) if before.is_empty() => {}
                Ok(before) => {
                    return Err(format!(
                        "{} now run(s) before the TC egress snooper on {}",
                        before.join(", "),
                        f.iface
                    ))
                }
                Err(e) => return Err(format!("{e:#}")),
            }
        }
        Ok(())
    }

    /// Undo everything: XDP first (so nothing is relayed while revocations can no longer be
    /// seen), then the TC snooper, then the forwarding settings we changed.
    pub fn detach_all(&mut self) {
        for l in self.xdp.drain(..).rev() {
            if let Some(pin) = &l.pin {
                if let Err(e) = fs::remove_file(pin) {
                    warn!("unpinning {}: {e}", pin.display());
                }
            }
            info!("detached XDP from {}", l.iface);
            drop(l);
        }
        for (tp, link) in self.tracing.drain(..).rev() {
            debug!("detached the drop counter from {tp}");
            drop(link);
        }
        for mut f in self.tc.drain(..).rev() {
            f.detach();
        }
        let mut left_on = Vec::new();
        let mut failed = crate::runlock::Changes::default();
        for (family, iface) in self.forwarding_enabled_by_us.drain(..).rev() {
            match restore_forwarding(family, &iface) {
                Some(Restore::LeaveOn) if family == Family::V6 => left_on.push(iface),
                Some(_) => {}
                None => failed.forwarding.insert(0, (family, iface)),
            }
        }
        for iface in self.accept_ra_set_by_us.drain(..).rev() {
            if !restore_accept_ra(&iface, left_on.contains(&iface)) {
                failed.accept_ra.insert(0, iface);
            }
        }
        self.restored = failed.is_empty();
        if let Some(lock) = &self.lock {
            let kept = if self.restored {
                lock.clear()
            } else {
                // what could not be restored stays recorded, for `turn-bpf detach` to try again
                warn!(
                    "not every forwarding setting could be restored: those stay recorded in {} \
                     for `turn-bpf detach`",
                    crate::runlock::RUN_DIR
                );
                lock.record(&failed)
            };
            if let Err(e) = kept {
                warn!("{e:#}");
            }
            if !self.restored {
                // (a second call, on drop, must not clear that record)
                self.lock = None;
            }
        }
    }
}

impl Attachments {
    /// The forwarding settings this agent changed (or took over), for the record.
    pub fn changes(&self) -> crate::runlock::Changes {
        crate::runlock::Changes {
            forwarding: self.forwarding_enabled_by_us.clone(),
            accept_ra: self.accept_ra_set_by_us.clone(),
        }
    }

    /// Take over what an earlier agent changed and did not restore: restored as our own.
    pub fn adopt_changes(&mut self, c: crate::runlock::Changes) {
        self.forwarding_enabled_by_us.extend(c.forwarding);
        self.accept_ra_set_by_us.extend(c.accept_ra);
    }

    /// Leave the pinned XDP links, the snooper and the forwarding settings in place (--pin-path):
    /// only this process's handles go, and the tracing programs with them.
    pub fn release_pinned(&mut self) {
        for l in self.xdp.drain(..) {
            info!("leaving the XDP fast path on {} pinned", l.iface);
        }
        self.tracing.clear();
        for f in self.tc.drain(..) {
            info!("leaving the TC egress snooper on {} in place", f.iface);
        }
        self.forwarding_enabled_by_us.clear();
        self.accept_ra_set_by_us.clear();
        // The record stays for the next agent or `turn-bpf detach` (the lock goes with us).
        self.lock = None;
    }
}

/// What to do on exit with forwarding on an interface where we switched it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Still on, and nobody enabled the family's forwarding globally: switch it off again.
    SwitchOff,
    /// `net.<family>.conf.all.forwarding` is on: someone else enabled forwarding meanwhile.
    LeaveOn,
    /// Someone switched it off meanwhile: nothing to do.
    AlreadyOff,
}

/// The decision, from the interface's forwarding now and the same family's
/// `net.<family>.conf.all.forwarding` now.
pub fn forwarding_restore(iface_on: bool, all_on: bool) -> Restore {
    match (iface_on, all_on) {
        (false, _) => Restore::AlreadyOff,
        (true, true) => Restore::LeaveOn,
        (true, false) => Restore::SwitchOff,
    }
}

/// What to do on exit with `accept_ra` on an interface where we set it from 1 to 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaRestore {
    /// Still 2 and IPv6 forwarding went off again: back to 1.
    Back,
    /// Still 2, but IPv6 forwarding stays on (someone else enabled it): with 1 the interface
    /// would stop taking Router Advertisements, so it stays 2.
    LeaveForForwarding,
    /// Someone changed it meanwhile: theirs now.
    Changed,
}

/// The decision, from `accept_ra` now and whether the interface's IPv6 forwarding stays on.
pub fn accept_ra_restore(now: &str, forwarding_left_on: bool) -> RaRestore {
    match (now.trim() == "2", forwarding_left_on) {
        (false, _) => RaRestore::Changed,
        (true, true) => RaRestore::LeaveForForwarding,
        (true, false) => RaRestore::Back,
    }
}

fn restore_forwarding(family: Family, iface: &str) -> Option<Restore> {
    let fam = family.name();
    let now =
        forwarding_enabled(family, iface).and_then(|i| Ok((i, forwarding_enabled(family, "all")?)));
    let decision = match now {
        Ok((i, all)) => forwarding_restore(i, all),
        Err(e) => {
            warn!("leaving {fam} forwarding on {iface} as it is: {e:#}");
            return None;
        }
    };
    match decision {
        Restore::SwitchOff => match set_forwarding(family, iface, false) {
            Ok(()) => info!("restored {fam} forwarding off on {iface}"),
            Err(e) => {
                warn!("restoring {fam} forwarding on {iface}: {e:#}");
                return None;
            }
        },
        Restore::LeaveOn => warn!(
            "leaving {fam} forwarding on on {iface}: someone else enabled forwarding meanwhile \
             (net.{}.conf.all.forwarding=1)",
            family.dir()
        ),
        Restore::AlreadyOff => {
            info!("{fam} forwarding on {iface} was switched off meanwhile: nothing to restore")
        }
    }
    Some(decision)
}

/// False when the setting could not be read or written back.
fn restore_accept_ra(iface: &str, forwarding_left_on: bool) -> bool {
    let path = accept_ra_path(iface);
    let now = match read_sysctl(&path) {
        Ok(v) => v,
        Err(e) => {
            warn!("leaving accept_ra on {iface} as it is: {e:#}");
            return false;
        }
    };
    match accept_ra_restore(&now, forwarding_left_on) {
        RaRestore::Back => match write_sysctl(&path, "1") {
            Ok(()) => info!("restored accept_ra=1 on {iface}"),
            Err(e) => {
                warn!("restoring accept_ra on {iface}: {e:#}");
                return false;
            }
        },
        RaRestore::LeaveForForwarding => warn!(
            "leaving accept_ra=2 on {iface}: its IPv6 forwarding stays on, and with accept_ra=1 \
             it would stop taking Router Advertisements"
        ),
        RaRestore::Changed => {
            info!("accept_ra on {iface} was changed meanwhile (now {now}): nothing to restore")
        }
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_before_ours_are_found_once() {
        let json = r#"[{"protocol":"all","pref":1,"kind":"u32","chain":0},{"protocol":"all","pref":1,"kind":"u32","chain":0,"options":{"fh":"800:"}},{"protocol":"all","pref":29794,"kind":"bpf","chain":0},{"protocol":"all","pref":29794,"kind":"bpf","chain":0,"options":{"handle":"0x7462","bpf_name":"tc_snoop"}},{"protocol":"all","pref":29794,"kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"other"}},{"protocol":"all","pref":40000,"kind":"bpf","chain":0}]"#;
        assert_eq!(
            filters_before(json, TC_PRIORITY),
            vec![
                "u32 filter at preference 1".to_string(),
                "bpf filter at preference 29794 (another handle)".to_string()
            ]
        );
        assert!(filters_before("[]", TC_PRIORITY).is_empty());
        assert!(filters_before("", TC_PRIORITY).is_empty());
    }
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A fake attachment that records its own detach.
    struct Fake {
        what: String,
        log: Rc<RefCell<Vec<String>>>,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.log.borrow_mut().push(format!("detach {}", self.what));
        }
    }

    fn ifaces(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The mode and the attachments made (by name), or the error; and the attach/detach log.
    type Outcome = (Result<Option<(Mode, Vec<String>)>>, Vec<String>);

    /// Run `attach_uniform` with a fake attach that refuses (errno) where `refuse` says so.
    fn run(
        requested: XdpMode,
        refuse: impl Fn(&str, Mode) -> Option<i32>,
        stop_after: Option<usize>,
    ) -> Outcome {
        let log = Rc::new(RefCell::new(Vec::new()));
        let attempts = RefCell::new(0usize);
        let stop = || stop_after.is_some_and(|n| *attempts.borrow() >= n);
        let res = attach_uniform(&ifaces(&["a", "b", "c"]), requested, &stop, |i, m| {
            *attempts.borrow_mut() += 1;
            let what = format!("{i} {}", m.name());
            log.borrow_mut().push(format!("attach {what}"));
            if let Some(errno) = refuse(i, m) {
                return Err(io::Error::from_raw_os_error(errno))
                    .with_context(|| format!("attaching XDP to {i} in {} mode", m.name()));
            }
            Ok(Fake {
                what,
                log: log.clone(),
            })
        });
        let res = res.map(|o| {
            o.map(|(mode, links)| {
                let names = links.iter().map(|l| l.what.clone()).collect();
                std::mem::forget(links);
                (mode, names)
            })
        });
        let log = log.borrow().clone();
        (res, log)
    }

    #[test]
    fn auto_attaches_native_everywhere_when_every_interface_takes_it() {
        let (res, log) = run(XdpMode::Auto, |_, _| None, None);
        let (mode, links) = res.unwrap().unwrap();
        assert_eq!(mode, Mode::Native);
        assert_eq!(links, ["a native", "b native", "c native"]);
        assert_eq!(
            log,
            ["attach a native", "attach b native", "attach c native"]
        );
    }

    #[test]
    fn auto_never_mixes_modes() {
        // b has no native XDP: a's native attachment is undone and all go generic.
        let refuse = |i: &str, m| (i == "b" && m == Mode::Native).then_some(nix::libc::EOPNOTSUPP);
        let (res, log) = run(XdpMode::Auto, refuse, None);
        let (mode, links) = res.unwrap().unwrap();
        assert_eq!(mode, Mode::Generic);
        assert_eq!(links, ["a generic", "b generic", "c generic"]);
        assert_eq!(
            log,
            [
                "attach a native",
                "attach b native",
                "detach a native",
                "attach a generic",
                "attach b generic",
                "attach c generic"
            ]
        );
    }

    #[test]
    fn only_a_refusal_of_the_mode_falls_back() {
        // busy, or generic refused too: an error, with nothing left attached
        for (requested, refuse_generic, errno) in [
            (XdpMode::Auto, false, nix::libc::EBUSY),
            (XdpMode::Auto, true, nix::libc::EOPNOTSUPP),
            (XdpMode::Native, false, nix::libc::EOPNOTSUPP),
        ] {
            let refuse =
                |i: &str, m| (i == "b" && (m == Mode::Native || refuse_generic)).then_some(errno);
            let (res, log) = run(requested, refuse, None);
            let e = res.unwrap_err();
            assert!(format!("{e:#}").contains("attaching XDP to b"), "{e:#}");
            let attached = log.iter().filter(|l| l.starts_with("attach a")).count();
            let detached = log.iter().filter(|l| l.starts_with("detach a")).count();
            assert_eq!(attached, detached, "{requested:?}: {log:?}");
        }
        // explicit generic: generic only
        let (res, log) = run(XdpMode::Generic, |_, _| None, None);
        assert_eq!(res.unwrap().unwrap().0, Mode::Generic);
        assert!(log.iter().all(|l| l.ends_with("generic")), "{log:?}");
        // an error that is not the kernel refusing the mode (a program already there)
        assert!(!refused_mode(&anyhow!(
            "b already has an XDP program attached"
        )));
        assert!(refused_mode(&anyhow::Error::from(
            io::Error::from_raw_os_error(nix::libc::EOPNOTSUPP)
        )));
        assert_eq!(xdp_mode_plan(XdpMode::Auto), [Mode::Native, Mode::Generic]);
        assert_eq!(xdp_mode_plan(XdpMode::Native), [Mode::Native]);
        assert_eq!(xdp_mode_plan(XdpMode::Generic), [Mode::Generic]);
    }

    #[test]
    fn a_stop_during_attach_undoes_everything() {
        let (res, log) = run(XdpMode::Auto, |_, _| None, Some(2));
        assert!(res.unwrap().is_none());
        assert_eq!(
            log,
            [
                "attach a native",
                "attach b native",
                "detach a native",
                "detach b native"
            ]
        );
    }

    #[test]
    fn forwarding_is_restored_only_when_nobody_else_changed_it() {
        assert_eq!(forwarding_restore(true, false), Restore::SwitchOff);
        assert_eq!(forwarding_restore(true, true), Restore::LeaveOn);
        assert_eq!(forwarding_restore(false, false), Restore::AlreadyOff);
        assert_eq!(forwarding_restore(false, true), Restore::AlreadyOff);
    }

    #[test]
    fn forwarding_is_checked_in_both_families_and_explained() {
        // IPv6 absent (no /proc/sys/net/ipv6, or disable_ipv6) is fine; off is not.
        assert_eq!(forwarding_check(None), ForwardingCheck::Fine);
        assert_eq!(forwarding_check(Some(true)), ForwardingCheck::Fine);
        assert_eq!(forwarding_check(Some(false)), ForwardingCheck::Off);
        let v4 = |i: &str| (Family::V4, i.to_string());
        let v6 = |i: &str| (Family::V6, i.to_string());
        assert_eq!(
            forwarding_path(Family::V6, "eth0"),
            "/proc/sys/net/ipv6/conf/eth0/forwarding"
        );
        assert_eq!(
            forwarding_path(Family::V4, "all"),
            "/proc/sys/net/ipv4/conf/all/forwarding"
        );
        let both = forwarding_refusal(&[v4("turn0"), v4("relay0"), v6("turn0"), v6("relay0")]);
        assert!(
            both.starts_with(
                "IPv4 forwarding is off on turn0, relay0, and IPv6 forwarding is off on turn0, \
                 relay0: the fast path's FIB lookups need it (net.ipv4.conf.<if>.forwarding=1, \
                 net.ipv6.conf.<if>.forwarding=1). Pass --enable-forwarding"
            ),
            "{both}"
        );
        let only6 = forwarding_refusal(&[v6("relay0")]);
        assert!(
            only6.starts_with(
                "IPv6 forwarding is off on relay0: the fast path's FIB lookups need it \
                 (net.ipv6.conf.<if>.forwarding=1)."
            ),
            "{only6}"
        );
    }

    #[test]
    fn accept_ra_goes_to_2_only_from_1_and_back_only_when_forwarding_goes_off() {
        assert!(accept_ra_needs_2("1\n"));
        assert!(!accept_ra_needs_2("0"));
        assert!(!accept_ra_needs_2("2"));
        assert!(!accept_ra_needs_2(""));
        assert_eq!(accept_ra_restore("2\n", false), RaRestore::Back);
        assert_eq!(accept_ra_restore("2", true), RaRestore::LeaveForForwarding);
        assert_eq!(accept_ra_restore("1", false), RaRestore::Changed);
        assert_eq!(accept_ra_restore("0", true), RaRestore::Changed);
    }
}
