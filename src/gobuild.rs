//! The Go build information of an executable: which Go built it, its main module and the modules
//! it was built from, as `go version -m` prints them. The agent reads it from the TURN server's
//! executable to tell which pion/turn (major version and module version) a Go server embeds.
//!
//! Where it lives (Go's `debug/buildinfo`, `runtime/debug`): the ELF section `.go.buildinfo` (or,
//! without section headers, a 16-byte aligned spot in the file) starts with the 14-byte magic
//! `"\xff Go buildinf:"`, one byte of pointer size and one byte of flags (bit 0: big-endian,
//! bit 1: strings inline). Go 1.18 and later write the strings inline from offset 32: the Go
//! version, then the module text, each preceded by its length as an unsigned varint. Older
//! executables hold two pointers at offset 16, each to a Go string header (data pointer,
//! length), to be followed through the program headers. The module text is framed by two 16-byte
//! sentinels and reads, one item per line, tab-separated:
//!
//! ```text
//! path  <main package path>
//! mod   <main module path> <version> [<sum>]
//! dep   <module path> <version> [<sum>]
//! =>    <replacement path> <version> [<sum>]     (replaces the dep line above it)
//! build <key>=<value>
//! ```
//!
//! A program built in GOPATH mode (`GO111MODULE=off`) has a Go version but no module text; its
//! package paths are still in the function names of its `.gopclntab`, so the pion/turn major
//! version can be found there (`github.com/pion/turn/v2.NewServer`), with the version unknown.

use std::path::Path;

use anyhow::{Context, Result};

/// The magic that opens the build information blob.
pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Flag bit: the pointers are big-endian.
const FLAG_BIG_ENDIAN: u8 = 0x1;
/// Flag bit: the strings follow inline (Go 1.18+).
const FLAG_INLINE: u8 = 0x2;
/// The module text's framing (`runtime/debug`'s `infoStart`/`infoEnd`, 16 bytes each).
const SENTINEL_LEN: usize = 16;

/// The Go module path of pion/turn before `/vN`.
pub const PION_TURN: &str = "github.com/pion/turn";

/// What an executable says about how it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoBuildInfo {
    /// The Go toolchain, e.g. `go1.19.8`.
    pub go_version: String,
    /// The main package's path (`path` line); empty without module information.
    pub main_path: String,
    /// The main module (`mod` line) and every dependency (`dep` lines), as (path, version), in
    /// the executable's order. A dependency's version is the one required, even when it was
    /// replaced (see `replaced`).
    pub modules: Vec<(String, String)>,
    /// Replacements (`=>` lines): (module path, replacement path, replacement version; the
    /// version is `(devel)` or empty for a local directory).
    pub replaced: Vec<(String, String, String)>,
    /// Without module information: the pion/turn major versions whose package paths appear among
    /// the executable's function names (GOPATH-mode builds).
    pub pion_turn_in_symbols: Vec<u32>,
}

impl GoBuildInfo {
    /// The pion/turn this executable embeds: its major version and module version, as a
    /// dependency or as the main module (`github.com/pion/turn` is v1, `.../v2` to `.../v5`).
    /// Without module information, the major version found in the function names with the
    /// version `unknown`.
    /// A pion/turn module replaced by other code (`=>`: a fork, a local directory) reports the
    /// version `replaced`: its code is not the published version's.
    pub fn pion_turn(&self) -> Option<(u32, String)> {
        let from_modules = self.modules.iter().find_map(|(path, version)| {
            let major = pion_turn_major(path)?;
            if self.replaced.iter().any(|(p, _, _)| p == path) {
                return Some((major, "replaced".to_string()));
            }
            Some((major, version.clone()))
        });
        from_modules.or_else(|| {
            let major = *self.pion_turn_in_symbols.iter().max()?;
            Some((major, "unknown".to_string()))
        })
    }
}

/// The major version a pion/turn module path names: `github.com/pion/turn` is 1,
/// `github.com/pion/turn/vN` is N (2 to 5); None for anything else.
pub fn pion_turn_major(path: &str) -> Option<u32> {
    let rest = path.strip_prefix(PION_TURN)?;
    if rest.is_empty() {
        return Some(1);
    }
    match rest.strip_prefix("/v")?.parse::<u32>().ok()? {
        n @ 2..=5 => Some(n),
        _ => None,
    }
}

/// Reads the Go build information of the executable at `path`: None when it is not a Go
/// executable (not ELF, or no build information in it); an error only when it cannot be read.
pub fn read(path: &Path) -> Result<Option<GoBuildInfo>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_file(&data))
}

/// [`read`] on the bytes of an executable.
pub fn parse_file(data: &[u8]) -> Option<GoBuildInfo> {
    let elf = Elf::parse(data)?;
    let start = elf
        .section(".go.buildinfo")
        .map(|(off, _)| off)
        .filter(|&off| data.get(off..off + MAGIC.len()) == Some(&MAGIC[..]))
        .or_else(|| find_magic(data))?;
    let mut info = parse_blob(&data[start..], |vaddr, len| elf.read_vaddr(vaddr, len))?;
    if info.modules.is_empty() {
        let names = elf
            .section(".gopclntab")
            .map_or(data, |(off, size)| &data[off..(off + size).min(data.len())]);
        info.pion_turn_in_symbols = pion_turn_majors_in(names);
    }
    Some(info)
}

/// The magic at a 16-byte aligned offset, where Go places it, for files without section
/// headers.
fn find_magic(data: &[u8]) -> Option<usize> {
    (0..data.len().saturating_sub(32))
        .step_by(16)
        .find(|&i| data[i..].starts_with(MAGIC))
}

/// Parses the build information blob that starts with [`MAGIC`]; `read_vaddr` reads `len`
/// bytes at a virtual address (for the pointer format of Go before 1.18).
pub fn parse_blob(
    blob: &[u8],
    read_vaddr: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Option<GoBuildInfo> {
    if !blob.starts_with(MAGIC) || blob.len() < 32 {
        return None;
    }
    let ptr_size = blob[14] as usize;
    let flags = blob[15];
    let (version, modinfo) = if flags & FLAG_INLINE != 0 {
        let (version, rest) = read_varint_string(&blob[32..])?;
        let (modinfo, _) = read_varint_string(rest)?;
        (version.to_vec(), modinfo.to_vec())
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return None;
        }
        let big = flags & FLAG_BIG_ENDIAN != 0;
        let ptr_at = |b: &[u8], i: usize| read_uint(b.get(i..i + ptr_size)?, big);
        // Each pointer leads to a string header: data pointer, then length.
        let string_at = |ptr: u64| -> Option<Vec<u8>> {
            let header = read_vaddr(ptr, 2 * ptr_size)?;
            let (data, len) = (ptr_at(&header, 0)?, ptr_at(&header, ptr_size)?);
            if len == 0 {
                return Some(Vec::new());
            }
            read_vaddr(data, usize::try_from(len).ok()?)
        };
        let version = string_at(ptr_at(blob, 16)?)?;
        let modinfo = string_at(ptr_at(blob, 16 + ptr_size)?).unwrap_or_default();
        (version, modinfo)
    };
    let mut info = GoBuildInfo {
        go_version: String::from_utf8_lossy(&version).into_owned(),
        ..GoBuildInfo::default()
    };
    parse_modinfo(&unframe(&modinfo), &mut info);
    Some(info)
}

/// The module text without its sentinels (`debug/buildinfo` does the same check: at least 33
/// bytes, a newline just before the closing sentinel); empty when it is not framed.
fn unframe(modinfo: &[u8]) -> String {
    let n = modinfo.len();
    if n > 2 * SENTINEL_LEN && modinfo[n - SENTINEL_LEN - 1] == b'\n' {
        String::from_utf8_lossy(&modinfo[SENTINEL_LEN..n - SENTINEL_LEN]).into_owned()
    } else {
        String::new()
    }
}

/// Reads the `path`, `mod`, `dep` and `=>` lines of the module text into `info`.
pub fn parse_modinfo(text: &str, info: &mut GoBuildInfo) {
    for line in text.lines() {
        let mut f = line.split('\t');
        let (kind, path, version) = (f.next(), f.next(), f.next().unwrap_or(""));
        match (kind, path) {
            (Some("path"), Some(p)) => info.main_path = p.to_string(),
            (Some("mod" | "dep"), Some(p)) => info.modules.push((p.into(), version.into())),
            (Some("=>"), Some(p)) => {
                if let Some((module, _)) = info.modules.last() {
                    info.replaced
                        .push((module.clone(), p.to_string(), version.to_string()));
                }
            }
            _ => {}
        }
    }
}

/// A string preceded by its length as an unsigned LEB128 varint, and what follows it.
fn read_varint_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut len: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = i + 1;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            return Some((b.get(start..end)?, &b[end..]));
        }
    }
    None
}

/// An unsigned integer of 1 to 8 bytes.
fn read_uint(b: &[u8], big_endian: bool) -> Option<u64> {
    if b.is_empty() || b.len() > 8 {
        return None;
    }
    let mut v = 0u64;
    for i in 0..b.len() {
        let byte = if big_endian { b[i] } else { b[b.len() - 1 - i] };
        v = v << 8 | u64::from(byte);
    }
    Some(v)
}

/// The pion/turn major versions whose package paths appear in `names` (function names such as
/// `github.com/pion/turn/v2.NewServer` or `github.com/pion/turn.(*Server).Close`).
pub fn pion_turn_majors_in(names: &[u8]) -> Vec<u32> {
    let mut found = Vec::new();
    let needle = PION_TURN.as_bytes();
    let mut at = 0;
    while let Some(i) = find(&names[at..], needle) {
        let rest = &names[at + i + needle.len()..];
        let major = match rest {
            [b'.', ..] => Some(1),
            [b'/', b'v', d, b'.' | b'/', ..] if (b'2'..=b'5').contains(d) => {
                Some(u32::from(d - b'0'))
            }
            _ => None,
        };
        if let Some(m) = major {
            if !found.contains(&m) {
                found.push(m);
            }
        }
        at += i + needle.len();
    }
    found.sort_unstable();
    found
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Just enough of an ELF file: its sections by name and its loadable segments.
struct Elf<'a> {
    data: &'a [u8],
    /// (name, file offset, size)
    sections: Vec<(String, usize, usize)>,
    /// (virtual address, file offset, size in the file)
    segments: Vec<(u64, u64, u64)>,
}

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Option<Elf<'a>> {
        if data.get(0..4)? != b"\x7fELF" {
            return None;
        }
        let wide = match data.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let big = *data.get(5)? == 2;
        let u = |off: usize, len: usize| read_uint(data.get(off..off + len)?, big);
        let word = if wide { 8 } else { 4 };
        // e_phoff, e_shoff, then e_flags, e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum,
        // e_shstrndx.
        let phoff = u(0x18 + word, word)? as usize;
        let shoff = u(0x18 + 2 * word, word)? as usize;
        let h = 0x18 + 3 * word + 4;
        let (phentsize, phnum) = (u(h + 2, 2)? as usize, u(h + 4, 2)? as usize);
        let (shentsize, shnum, shstrndx) = (
            u(h + 6, 2)? as usize,
            u(h + 8, 2)? as usize,
            u(h + 10, 2)? as usize,
        );
        let mut segments = Vec::new();
        for i in 0..phnum {
            let p = phoff + i * phentsize;
            if u(p, 4)? != 1 {
                continue; // not PT_LOAD
            }
            let (offset, vaddr, filesz) = if wide {
                (u(p + 8, 8)?, u(p + 16, 8)?, u(p + 32, 8)?)
            } else {
                (u(p + 4, 4)?, u(p + 8, 4)?, u(p + 16, 4)?)
            };
            segments.push((vaddr, offset, filesz));
        }
        // Section header: sh_name at 0, sh_offset and sh_size after sh_type, sh_flags, sh_addr.
        let section = |i: usize| -> Option<(usize, usize, usize)> {
            let s = shoff + i * shentsize;
            let name = u(s, 4)? as usize;
            let (off, size) = if wide {
                (u(s + 24, 8)?, u(s + 32, 8)?)
            } else {
                (u(s + 16, 4)?, u(s + 20, 4)?)
            };
            Some((name, off as usize, size as usize))
        };
        let mut sections = Vec::new();
        if shoff != 0 && shstrndx < shnum {
            let (_, str_off, str_size) = section(shstrndx)?;
            let strtab = data.get(str_off..str_off.checked_add(str_size)?)?;
            for i in 0..shnum {
                let (name, off, size) = section(i)?;
                let name = strtab.get(name..).unwrap_or_default();
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                sections.push((
                    String::from_utf8_lossy(&name[..end]).into_owned(),
                    off,
                    size,
                ));
            }
        }
        Some(Elf {
            data,
            sections,
            segments,
        })
    }

    /// (file offset, size) of the section `name`.
    fn section(&self, name: &str) -> Option<(usize, usize)> {
        self.sections
            .iter()
            .find(|(n, off, size)| n == name && off.checked_add(*size).is_some())
            .map(|&(_, off, size)| (off, size))
    }

    /// `len` bytes at virtual address `vaddr`, through the loadable segments.
    fn read_vaddr(&self, vaddr: u64, len: usize) -> Option<Vec<u8>> {
        let (seg_vaddr, offset, filesz) = self
            .segments
            .iter()
            .copied()
            .find(|&(v, _, size)| vaddr >= v && vaddr - v < size)?;
        let within = vaddr - seg_vaddr;
        if within.checked_add(len as u64)? > filesz {
            return None;
        }
        let start = usize::try_from(offset + within).ok()?;
        self.data.get(start..start + len).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &[u8; 16] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";
    const END: &[u8; 16] = b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2";

    const MODTEXT: &str = "path\tturn-bpf.test/pion-lab\n\
        mod\tturn-bpf.test/pion-lab\t(devel)\t\n\
        dep\tgithub.com/pion/logging\tv0.2.2\n\
        =>\t/usr/share/gocode/src/github.com/pion/logging\t(devel)\t\n\n\
        dep\tgithub.com/pion/turn/v2\tv2.1.0\th1:abc=\n\
        build\t-compiler=gc\n";

    fn framed(text: &str) -> Vec<u8> {
        [&START[..], text.as_bytes(), &END[..]].concat()
    }

    fn varint(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// A Go 1.18+ blob: magic, pointer size 8, flags inline, padding to 32, two varint strings.
    fn inline_blob(version: &str, modinfo: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend([8, FLAG_INLINE]);
        b.resize(32, 0);
        b.extend(varint(version.len()));
        b.extend(version.as_bytes());
        b.extend(varint(modinfo.len()));
        b.extend(modinfo);
        b
    }

    fn no_vaddr(_: u64, _: usize) -> Option<Vec<u8>> {
        None
    }

    #[test]
    fn inline_format_with_modules_and_replacements() {
        let modinfo = framed(MODTEXT);
        assert!(modinfo.len() > 127, "the length takes a two-byte varint");
        let info = parse_blob(&inline_blob("go1.19.8", &modinfo), no_vaddr).unwrap();
        assert_eq!(info.go_version, "go1.19.8");
        assert_eq!(info.main_path, "turn-bpf.test/pion-lab");
        assert_eq!(
            info.modules,
            vec![
                ("turn-bpf.test/pion-lab".into(), "(devel)".into()),
                ("github.com/pion/logging".into(), "v0.2.2".into()),
                ("github.com/pion/turn/v2".into(), "v2.1.0".into()),
            ]
        );
        assert_eq!(
            info.replaced,
            vec![(
                "github.com/pion/logging".into(),
                "/usr/share/gocode/src/github.com/pion/logging".into(),
                "(devel)".into()
            )]
        );
        assert_eq!(info.pion_turn(), Some((2, "v2.1.0".into())));
        // pion/turn itself replaced (a fork, a local directory): not the published v2.1.0
        let mut forked = info.clone();
        forked.replaced.push((
            "github.com/pion/turn/v2".into(),
            "../turn-fork".into(),
            String::new(),
        ));
        assert_eq!(forked.pion_turn(), Some((2, "replaced".into())));
    }

    #[test]
    fn unframed_or_empty_module_text_gives_no_modules() {
        let info = parse_blob(&inline_blob("go1.19.8", b""), no_vaddr).unwrap();
        assert_eq!(info.go_version, "go1.19.8");
        assert!(info.modules.is_empty() && info.main_path.is_empty());
        assert_eq!(info.pion_turn(), None);
        // The text without its sentinels is not trusted (debug/buildinfo does the same).
        let info = parse_blob(&inline_blob("go1.20", MODTEXT.as_bytes()), no_vaddr).unwrap();
        assert!(info.modules.is_empty());
    }

    #[test]
    fn truncated_or_foreign_blobs_are_refused() {
        let full = inline_blob("go1.19.8", &framed(MODTEXT));
        for cut in [0, 10, 31, 33, 40, full.len() - 1] {
            assert_eq!(parse_blob(&full[..cut], no_vaddr), None, "cut at {cut}");
        }
        let mut wrong = full.clone();
        wrong[1] = b'X';
        assert_eq!(parse_blob(&wrong, no_vaddr), None);
        assert_eq!(parse_file(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(parse_file(b""), None);
    }

    /// Go before 1.18: two pointers at offset 16, each to a string header elsewhere in memory.
    #[test]
    fn pointer_format_follows_string_headers() {
        for (ptr_size, big) in [(8usize, false), (4, false), (8, true)] {
            let put = |v: u64| -> Vec<u8> {
                let b = v.to_be_bytes()[8 - ptr_size..].to_vec();
                if big {
                    b
                } else {
                    b.into_iter().rev().collect()
                }
            };
            let modinfo = framed(MODTEXT);
            // Memory at 0x1000: version header, modinfo header; the strings at 0x2000, 0x3000.
            let mut mem = std::collections::BTreeMap::new();
            mem.insert(0x1000u64, [put(0x2000), put(8)].concat());
            mem.insert(0x1100u64, [put(0x3000), put(modinfo.len() as u64)].concat());
            mem.insert(0x2000u64, b"go1.16.3".to_vec());
            mem.insert(0x3000u64, modinfo.clone());
            let read = |vaddr: u64, len: usize| -> Option<Vec<u8>> {
                let (base, bytes) = mem.range(..=vaddr).next_back()?;
                let off = (vaddr - base) as usize;
                bytes.get(off..off + len).map(<[u8]>::to_vec)
            };
            let mut blob = MAGIC.to_vec();
            blob.extend([ptr_size as u8, if big { FLAG_BIG_ENDIAN } else { 0 }]);
            blob.extend(put(0x1000));
            blob.extend(put(0x1100));
            blob.resize(32, 0);
            let info = parse_blob(&blob, read).unwrap();
            assert_eq!(info.go_version, "go1.16.3", "ptr {ptr_size} big {big}");
            assert_eq!(info.pion_turn(), Some((2, "v2.1.0".into())));
        }
    }

    #[test]
    fn pion_turn_paths_by_major_version() {
        for (path, want) in [
            ("github.com/pion/turn", Some(1)),
            ("github.com/pion/turn/v2", Some(2)),
            ("github.com/pion/turn/v3", Some(3)),
            ("github.com/pion/turn/v4", Some(4)),
            ("github.com/pion/turn/v5", Some(5)),
            ("github.com/pion/turn/v6", None),
            ("github.com/pion/turnip", None),
            ("github.com/pion/stun", None),
            ("github.com/pion/turn/v2/internal", None),
        ] {
            assert_eq!(pion_turn_major(path), want, "{path}");
        }
        // As the main module (pion/turn's own examples built in its repository).
        let mut info = GoBuildInfo::default();
        parse_modinfo(
            "path\tgithub.com/pion/turn/v4/examples/turn-server/simple\n\
             mod\tgithub.com/pion/turn/v4\t(devel)\t\n",
            &mut info,
        );
        assert_eq!(info.pion_turn(), Some((4, "(devel)".into())));
    }

    #[test]
    fn gopath_builds_show_the_major_version_in_function_names() {
        let names = b"\0main.main\0github.com/pion/turn/v2.NewServer\0\
            github.com/pion/turn/v2/internal/server.HandleRequest\0github.com/pion/turnip.X\0";
        assert_eq!(pion_turn_majors_in(names), vec![2]);
        assert_eq!(
            pion_turn_majors_in(b"github.com/pion/turn.(*Server).Close\0"),
            vec![1]
        );
        assert_eq!(
            pion_turn_majors_in(b"github.com/pion/stun.Build\0"),
            Vec::<u32>::new()
        );
        let info = GoBuildInfo {
            go_version: "go1.19.8".into(),
            pion_turn_in_symbols: vec![2],
            ..GoBuildInfo::default()
        };
        assert_eq!(info.pion_turn(), Some((2, "unknown".into())));
    }

    /// A minimal ELF64 file with a `.go.buildinfo` section (and a section name table), laid out
    /// by hand.
    #[test]
    fn elf_section_is_found_by_name() {
        let blob = inline_blob("go1.21.0", &framed(MODTEXT));
        let shstrtab = b"\0.go.buildinfo\0.shstrtab\0";
        let blob_off = 64usize;
        let str_off = blob_off + blob.len();
        let sh_off = (str_off + shstrtab.len() + 7) & !7;
        let mut f = vec![0u8; sh_off + 3 * 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[0x28..0x30].copy_from_slice(&(sh_off as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes()); // e_shstrndx
        f[blob_off..str_off].copy_from_slice(&blob);
        f[str_off..str_off + shstrtab.len()].copy_from_slice(shstrtab);
        let section = |f: &mut Vec<u8>, i: usize, name: u32, off: usize, size: usize| {
            let s = sh_off + i * 64;
            f[s..s + 4].copy_from_slice(&name.to_le_bytes());
            f[s + 24..s + 32].copy_from_slice(&(off as u64).to_le_bytes());
            f[s + 32..s + 40].copy_from_slice(&(size as u64).to_le_bytes());
        };
        section(&mut f, 1, 1, blob_off, blob.len());
        section(&mut f, 2, 15, str_off, shstrtab.len());
        let info = parse_file(&f).expect("build information");
        assert_eq!(info.go_version, "go1.21.0");
        assert_eq!(info.pion_turn(), Some((2, "v2.1.0".into())));
        // Not ELF: none, even with the blob inside.
        let mut not_elf = f.clone();
        not_elf[0] = 0;
        assert_eq!(parse_file(&not_elf), None);
    }
}
