//! coturn 4.6.1's command line and configuration file, read the way coturn reads them: its option
//! table, GNU `getopt_long` over argv, the config file's `name=value` lines, and the C number
//! and boolean conversions it applies to the values.
//!
//! The table was read out of the `long_options` array of Debian's `/usr/bin/turnserver` (coturn
//! 4.6.1-1), entry by entry with its `has_arg`, and the short options from its `OPTIONS` string.
//! What matters most here: the lifetimes (and every flag) are `optional_argument`, so their value
//! counts only as `--name=value`; `--name value` leaves the default and a stray word.

/// `has_arg` of a `struct option`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HasArg {
    No,
    Required,
    Optional,
}

use HasArg::{Optional as O, Required as R};

/// coturn 4.6.1's `long_options`: name, `has_arg`, and `val` (a short option's letter, or the
/// number of one of its `EXTRA_OPTS`). Names sharing a `val` are aliases.
pub const LONG_OPTIONS: &[(&str, HasArg, u16)] = &[
    ("listening-device", R, b'd' as u16),
    ("listening-port", R, b'p' as u16),
    ("tls-listening-port", R, 263),
    ("alt-listening-port", R, 264),
    ("alt-tls-listening-port", R, 265),
    ("tcp-proxy-port", R, 258),
    ("listening-ip", R, b'L' as u16),
    ("relay-device", R, b'i' as u16),
    ("relay-ip", R, b'E' as u16),
    ("external-ip", R, b'X' as u16),
    ("relay-threads", R, b'm' as u16),
    ("min-port", R, 269),
    ("max-port", R, 270),
    ("lt-cred-mech", O, b'a' as u16),
    ("no-auth", O, b'z' as u16),
    ("user", R, b'u' as u16),
    ("userdb", R, b'b' as u16),
    ("db", R, b'b' as u16),
    ("psql-userdb", R, b'e' as u16),
    ("sql-userdb", R, b'e' as u16),
    ("mysql-userdb", R, b'M' as u16),
    ("redis-userdb", R, b'N' as u16),
    ("redis-statsdb", R, b'O' as u16),
    ("use-auth-secret", O, 278),
    ("static-auth-secret", R, 283),
    ("no-auth-pings", O, 279),
    ("no-dynamic-ip-list", O, 280),
    ("no-dynamic-realms", O, 281),
    ("secret-ts-exp-time", O, 284),
    ("realm", R, b'r' as u16),
    ("server-name", R, 332),
    ("oauth", O, 333),
    ("user-quota", R, b'q' as u16),
    ("total-quota", R, b'Q' as u16),
    ("max-bps", R, b's' as u16),
    ("bps-capacity", R, b'B' as u16),
    ("verbose", O, b'v' as u16),
    ("Verbose", O, b'V' as u16),
    ("daemon", O, b'o' as u16),
    ("prod", O, 334),
    ("no-software-attribute", O, 334),
    ("fingerprint", O, b'f' as u16),
    ("check-origin-consistency", O, 328),
    ("no-udp", O, 256),
    ("no-tcp", O, 257),
    ("no-tls", O, 259),
    ("no-dtls", O, 260),
    ("no-udp-relay", O, 261),
    ("no-tcp-relay", O, 262),
    ("stale-nonce", O, 271),
    ("max-allocate-lifetime", O, 272),
    ("channel-lifetime", O, 273),
    ("permission-lifetime", O, 274),
    ("stun-only", O, b'S' as u16),
    ("no-stun", O, 305),
    ("cert", R, 266),
    ("pkey", R, 267),
    ("pkey-pwd", R, 268),
    ("log-file", R, b'l' as u16),
    ("no-stdout-log", O, 285),
    ("syslog", O, 286),
    ("simple-log", O, 288),
    ("new-log-timestamp", O, 289),
    ("new-log-timestamp-format", R, 290),
    ("aux-server", R, 291),
    ("udp-self-balance", O, 292),
    ("alternate-server", R, 293),
    ("tls-alternate-server", R, 294),
    ("rest-api-separator", R, b'C' as u16),
    ("max-allocate-timeout", R, 297),
    ("no-multicast-peers", O, 295),
    ("allow-loopback-peers", O, 296),
    ("allowed-peer-ip", R, 298),
    ("denied-peer-ip", R, 299),
    ("cipher-list", R, 300),
    ("pidfile", R, 301),
    ("secure-stun", O, 302),
    ("CA-file", R, 303),
    ("dh-file", R, 304),
    ("proc-user", R, 306),
    ("proc-group", R, 307),
    ("mobility", O, 308),
    ("no-cli", O, 309),
    ("cli-ip", R, 310),
    ("cli-port", R, 311),
    ("cli-password", R, 312),
    ("web-admin", O, 313),
    ("web-admin-ip", R, 314),
    ("web-admin-port", R, 315),
    ("web-admin-listen-on-workers", O, 316),
    ("server-relay", O, 317),
    ("cli-max-output-sessions", R, 318),
    ("ec-curve-name", R, 319),
    ("dh566", O, 320),
    ("dh1066", O, 321),
    ("ne", R, 322),
    ("no-sslv2", O, 323),
    ("no-sslv3", O, 324),
    ("no-tlsv1", O, 325),
    ("no-tlsv1_1", O, 326),
    ("no-tlsv1_2", O, 327),
    ("secret-key-file", R, 336),
    ("keep-address-family", O, b'K' as u16),
    ("allocation-default-address-family", R, b'A' as u16),
    ("acme-redirect", R, 337),
    ("log-binding", O, 338),
    ("no-rfc5780", O, 339),
    ("no-stun-backward-compatibility", O, 340),
    ("response-origin-only-with-rfc5780", O, 341),
    ("version", O, 342),
    ("syslog-facility", R, 287),
];

/// coturn 4.6.1's short options (`getopt`'s optstring; a letter followed by `:` takes a value).
pub const SHORT_OPTIONS: &str = "c:d:p:L:E:X:i:m:l:r:u:b:B:e:M:J:N:O:q:Q:s:C:K:A:vVofhznaS";

/// One option as coturn's `set_option` receives it: the option's canonical name (the first long
/// name with its `val`, or the short letter when it has none: `c`, `n`, `h`, `J`) and its value
/// (`None`: no value, e.g. `--channel-lifetime` without `=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub name: &'static str,
    pub value: Option<String>,
}

/// argv as `getopt_long` splits it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedArgs {
    /// Options in the order given.
    pub opts: Vec<Opt>,
    /// Words that are no option's value ("CONFIGURATION ALERT: Unknown argument" in coturn's
    /// log; it prints only the last).
    pub leftovers: Vec<String>,
    /// Options that take their value only after `=` but were given one as the next word
    /// (`--channel-lifetime 600`): the option's name and that word, which is a leftover.
    pub ignored_values: Vec<(&'static str, String)>,
    /// What `getopt_long` complains about (coturn exits on these, so a running one has none).
    pub errors: Vec<String>,
}

/// The canonical name of option `val`.
fn canonical(val: u16) -> &'static str {
    LONG_OPTIONS
        .iter()
        .find(|(_, _, v)| *v == val)
        .map(|(name, _, _)| *name)
        .unwrap_or_else(|| short_name(val as u8))
}

/// A short option's letter as a `&'static str` (for letters without a long name).
fn short_name(c: u8) -> &'static str {
    let i = SHORT_OPTIONS.find(c as char).expect("a short option");
    &SHORT_OPTIONS[i..i + 1]
}

/// `Some(takes a value)` for a short option letter, `None` when coturn has no such option.
fn short_takes_value(c: u8) -> Option<bool> {
    if c == b':' {
        return None;
    }
    let i = SHORT_OPTIONS.bytes().position(|b| b == c)?;
    Some(SHORT_OPTIONS.as_bytes().get(i + 1) == Some(&b':'))
}

/// GNU `getopt_long`'s lookup of `--name`: an exact name, else a unique prefix (several prefix
/// matches that are all the same option count as one).
fn lookup_long(name: &str) -> Result<(HasArg, u16), String> {
    if let Some((_, has, val)) = LONG_OPTIONS.iter().find(|(n, _, _)| *n == name) {
        return Ok((*has, *val));
    }
    let mut found: Vec<(HasArg, u16)> = LONG_OPTIONS
        .iter()
        .filter(|(n, _, _)| !name.is_empty() && n.starts_with(name))
        .map(|(_, h, v)| (*h, *v))
        .collect();
    found.dedup();
    match found.as_slice() {
        [] => Err(format!("unrecognized option '--{name}'")),
        [one] => Ok(*one),
        [first, rest @ ..] if rest.iter().all(|o| o == first) => Ok(*first),
        _ => Err(format!("option '--{name}' is ambiguous")),
    }
}

/// Split coturn's argv (`argv[0]` first) as GNU `getopt_long` does with coturn's tables:
/// non-options are set aside (permutation), `--` ends the options, a required value is the rest
/// of the word (`--name=value`, `-pVALUE`) or the next word, an optional one only `--name=value`.
pub fn getopt_long(argv: &[String]) -> ParsedArgs {
    let mut out = ParsedArgs::default();
    let mut i = 1;
    while i < argv.len() {
        let word = &argv[i];
        i += 1;
        if word == "--" {
            out.leftovers.extend(argv[i..].iter().cloned());
            break;
        }
        if let Some(body) = word.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let (has, val) = match lookup_long(name) {
                Ok(o) => o,
                Err(e) => {
                    out.errors.push(e);
                    continue;
                }
            };
            let value = match (has, inline) {
                (HasArg::No, Some(_)) => {
                    out.errors
                        .push(format!("option '--{name}' doesn't allow an argument"));
                    continue;
                }
                (HasArg::Required, None) if i < argv.len() => {
                    i += 1;
                    Some(argv[i - 1].clone())
                }
                (HasArg::Required, None) => {
                    out.errors
                        .push(format!("option '--{name}' requires an argument"));
                    continue;
                }
                (_, v) => v,
            };
            if has == HasArg::Optional && value.is_none() {
                if let Some(next) = argv.get(i).filter(|w| !w.starts_with('-')) {
                    out.ignored_values.push((canonical(val), next.clone()));
                }
            }
            out.opts.push(Opt {
                name: canonical(val),
                value,
            });
        } else if word.len() > 1 && word.starts_with('-') {
            i = short_cluster(word, argv, i, &mut out);
        } else {
            out.leftovers.push(word.clone());
        }
    }
    out
}

/// `-abc`, `-pVALUE`, `-p VALUE`: the options in one word starting with a single `-`. Returns the
/// index of the next word to read.
fn short_cluster(word: &str, argv: &[String], mut next: usize, out: &mut ParsedArgs) -> usize {
    let bytes = word.as_bytes();
    let mut j = 1;
    while j < bytes.len() {
        let c = bytes[j];
        j += 1;
        match short_takes_value(c) {
            None => out
                .errors
                .push(format!("invalid option -- '{}'", c as char)),
            Some(false) => out.opts.push(Opt {
                name: canonical(u16::from(c)),
                value: None,
            }),
            Some(true) => {
                let value = if j < bytes.len() {
                    Some(String::from_utf8_lossy(&bytes[j..]).into_owned())
                } else if next < argv.len() {
                    next += 1;
                    Some(argv[next - 1].clone())
                } else {
                    out.errors
                        .push(format!("option requires an argument -- '{}'", c as char));
                    None
                };
                if let Some(value) = value {
                    out.opts.push(Opt {
                        name: canonical(u16::from(c)),
                        value: Some(value),
                    });
                }
                break;
            }
        }
    }
    next
}

/// What coturn's first look at argv decides about the config file (`read_config_file`, pass 0):
/// every word that is exactly `-c` names the file in the word after it (the last one wins;
/// `-cFILE` is not seen here), and a word `-n` means no file at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfChoice {
    /// coturn's default, `turnserver.conf`, searched for in its default directories.
    Default,
    /// `-c FILE`.
    Named(String),
    /// `-n`: no config file.
    NoFile,
}

pub fn conf_choice(argv: &[String]) -> ConfChoice {
    let mut choice = ConfChoice::Default;
    for (i, word) in argv.iter().enumerate() {
        if word == "-c" {
            if let Some(file) = argv.get(i + 1) {
                choice = ConfChoice::Named(file.clone());
            }
        } else if word == "-n" {
            return ConfChoice::NoFile;
        }
    }
    choice
}

/// One meaningful line of a coturn config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfLine {
    pub name: &'static str,
    /// Never absent: a name alone gives an empty value (true for flags, the default for the
    /// lifetimes).
    pub value: String,
}

/// The options in a coturn config file, read as `read_config_file` reads them: lines of at most
/// 1023 bytes (`fgets`), leading blanks skipped, `#` lines and empty lines ignored, trailing
/// whitespace stripped; the name ends at the first space, `=` or tab, any run of those follows,
/// the rest is the value (one pair of double quotes removed); the name must be exactly a long
/// option's name. Returns the options and the lines coturn ignores ("Bad configuration format").
pub fn parse_conf_file(text: &[u8]) -> (Vec<ConfLine>, Vec<String>) {
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for chunk in fgets_chunks(text, 1023) {
        let s = String::from_utf8_lossy(chunk);
        let s = s.trim_start_matches([' ', '\t', '\n']);
        if s.starts_with('#') {
            continue;
        }
        let s = s.trim_end_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        if s.is_empty() {
            continue;
        }
        let (name, value) = split_name_value(s);
        match LONG_OPTIONS.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, val)) => lines.push(ConfLine {
                name: canonical(*val),
                value,
            }),
            None => bad.push(s.to_string()),
        }
    }
    (lines, bad)
}

/// `fgets(buf, max + 1)` in a loop: pieces of at most `max` bytes, each ending at a newline
/// (included) or at the size limit.
fn fgets_chunks(text: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .take(max)
            .position(|&b| b == b'\n')
            .map_or(rest.len().min(max), |p| p + 1);
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

/// coturn's `parse_arg_string`.
fn split_name_value(s: &str) -> (&str, String) {
    let is_sep = |c: char| c == ' ' || c == '=' || c == '\t';
    let (name, value) = match s.find(is_sep) {
        Some(at) => (&s[..at], s[at..].trim_start_matches(is_sep)),
        None => (s, ""),
    };
    let value = match value.strip_prefix('"') {
        Some(v) => {
            let v = v.trim_end_matches(['\n', '\r', ' ', '\t']);
            v.strip_suffix('"').unwrap_or(v)
        }
        None => value,
    };
    (name, value.to_string())
}

/// C's `strtol` up to what it can read (leading whitespace, a sign, decimal digits; saturating
/// at the `long` range), 0 when there is no number.
fn strtol(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for d in digits.bytes().take_while(u8::is_ascii_digit) {
        let d = i64::from(d - b'0');
        n = if neg {
            n.saturating_mul(10).saturating_sub(d)
        } else {
            n.saturating_mul(10).saturating_add(d)
        };
    }
    n
}

/// C's `atoi` as glibc does it: `(int) strtol(s, NULL, 10)`.
pub fn atoi(s: &str) -> i32 {
    strtol(s) as i32
}

/// C's `strtoul(s, NULL, 10)`: a negative number wraps around (`-1` is the largest value).
pub fn strtoul(s: &str) -> u64 {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut n: u64 = 0;
    let mut overflow = false;
    for d in digits.bytes().take_while(u8::is_ascii_digit) {
        match n
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(d - b'0')))
        {
            Some(m) => n = m,
            None => overflow = true,
        }
    }
    match (overflow, neg) {
        (true, _) => u64::MAX,
        (false, true) => n.wrapping_neg(),
        (false, false) => n,
    }
}

/// coturn's `get_int_value`: no value or an empty one gives the default, anything else `atoi`.
pub fn int_value(v: Option<&str>, default: i32) -> i32 {
    match v {
        None | Some("") => default,
        Some(s) => atoi(s),
    }
}

/// coturn's `get_bool_value`. `None`: a value coturn refuses (it exits on it).
pub fn bool_value(v: Option<&str>) -> Option<bool> {
    let Some(s) = v.filter(|s| !s.is_empty()) else {
        return Some(true);
    };
    match s.as_bytes()[0] {
        b'0' | b'n' | b'N' | b'f' | b'F' => Some(false),
        b'y' | b'Y' | b't' | b'T' | b'1'..=b'9' => Some(true),
        _ => match s {
            "off" | "OFF" | "Off" => Some(false),
            "on" | "ON" | "On" => Some(true),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        std::iter::once("turnserver")
            .chain(words.iter().copied())
            .map(String::from)
            .collect()
    }

    fn opt(name: &'static str, value: Option<&str>) -> Opt {
        Opt {
            name,
            value: value.map(String::from),
        }
    }

    #[test]
    fn optional_values_count_only_with_equals() {
        let p = getopt_long(&argv(&[
            "--channel-lifetime",
            "5",
            "--permission-lifetime=7",
            "--max-allocate-lifetime",
        ]));
        assert_eq!(
            p.opts,
            [
                opt("channel-lifetime", None),
                opt("permission-lifetime", Some("7")),
                opt("max-allocate-lifetime", None),
            ]
        );
        assert_eq!(p.leftovers, ["5"], "the spaced value is a stray word");
        assert_eq!(p.ignored_values, [("channel-lifetime", "5".to_string())]);
        assert!(p.errors.is_empty());
    }

    #[test]
    fn required_values_take_the_next_word_whatever_it_is() {
        let p = getopt_long(&argv(&[
            "--listening-port",
            "3500",
            "--max-bps=1000",
            "--pidfile",
            "-n",
            "--denied-peer-ip",
        ]));
        assert_eq!(
            p.opts,
            [
                opt("listening-port", Some("3500")),
                opt("max-bps", Some("1000")),
                opt("pidfile", Some("-n")),
            ]
        );
        assert_eq!(p.errors, ["option '--denied-peer-ip' requires an argument"]);
        // `--name=` is an empty value, not a missing one
        let p = getopt_long(&argv(&["--allowed-peer-ip="]));
        assert_eq!(p.opts, [opt("allowed-peer-ip", Some(""))]);
    }

    #[test]
    fn short_options_clusters_and_attached_values() {
        let p = getopt_long(&argv(&[
            "-p",
            "3500",
            "-fv",
            "-s5000",
            "-X",
            "1.2.3.4",
            "-B=9",
            "-c",
            "/etc/x.conf",
        ]));
        assert_eq!(
            p.opts,
            [
                opt("listening-port", Some("3500")),
                opt("fingerprint", None),
                opt("verbose", None),
                opt("max-bps", Some("5000")),
                opt("external-ip", Some("1.2.3.4")),
                opt("bps-capacity", Some("=9")),
                opt("c", Some("/etc/x.conf")),
            ]
        );
        assert!(p.leftovers.is_empty());
        let p = getopt_long(&argv(&["-aw", "-p"]));
        assert_eq!(p.opts, [opt("lt-cred-mech", None)]);
        assert_eq!(
            p.errors,
            [
                "invalid option -- 'w'",
                "option requires an argument -- 'p'"
            ]
        );
    }

    #[test]
    fn long_names_may_be_abbreviated_when_unambiguous() {
        let p = getopt_long(&argv(&["--channel-l=9", "--listening-po", "1", "--no-t"]));
        assert_eq!(
            p.opts,
            [
                opt("channel-lifetime", Some("9")),
                opt("listening-port", Some("1")),
            ]
        );
        assert_eq!(p.errors, ["option '--no-t' is ambiguous"]);
        // aliases report their first name; --db is an exact name though --dbx is none
        let p = getopt_long(&argv(&["--no-soft", "--db", "x", "--pro"]));
        assert_eq!(
            p.opts,
            [opt("prod", None), opt("userdb", Some("x"))],
            "aliases report their first name"
        );
        assert_eq!(
            p.errors,
            ["option '--pro' is ambiguous"],
            "prod, proc-user, proc-group"
        );
        let p = getopt_long(&argv(&["--nosuch", "--fingerprint=1=2"]));
        assert_eq!(p.errors, ["unrecognized option '--nosuch'"]);
        assert_eq!(p.opts, [opt("fingerprint", Some("1=2"))]);
    }

    #[test]
    fn non_options_are_set_aside_and_double_dash_ends_options() {
        let p = getopt_long(&argv(&["stray", "-", "-f", "--", "--max-bps=1", "x"]));
        assert_eq!(p.opts, [opt("fingerprint", None)]);
        assert_eq!(p.leftovers, ["stray", "-", "--max-bps=1", "x"]);
    }

    #[test]
    fn the_config_file_is_what_the_last_lone_dash_c_names() {
        let c = |w: &[&str]| conf_choice(&argv(w));
        assert_eq!(c(&[]), ConfChoice::Default);
        assert_eq!(c(&["-c", "a"]), ConfChoice::Named("a".into()));
        assert_eq!(c(&["-c", "a", "-c", "b"]), ConfChoice::Named("b".into()));
        assert_eq!(c(&["-cfile"]), ConfChoice::Default, "-cFILE is not seen");
        assert_eq!(c(&["-c"]), ConfChoice::Default);
        assert_eq!(c(&["-c", "a", "-n"]), ConfChoice::NoFile);
        assert_eq!(c(&["-n", "-c", "a"]), ConfChoice::NoFile);
    }

    #[test]
    fn config_file_lines() {
        let text = b"# comment\n\
            \t  # indented comment\n\
            \n\
            listening-port=3500\n\
            channel-lifetime 60\n\
            permission-lifetime = 30   \n\
            max-bps\t=\t\"2000\"\n\
            no-multicast-peers\n\
            denied-peer-ip=10.0.0.1 # not a comment\n\
            --max-allocate-lifetime=5\n\
            p=3600\n\
            channel-l=5\n\
            user=alice:secret;\n";
        let (lines, bad) = parse_conf_file(text);
        let got: Vec<(&str, &str)> = lines.iter().map(|l| (l.name, l.value.as_str())).collect();
        assert_eq!(
            got,
            [
                ("listening-port", "3500"),
                ("channel-lifetime", "60"),
                ("permission-lifetime", "30"),
                ("max-bps", "2000"),
                ("no-multicast-peers", ""),
                ("denied-peer-ip", "10.0.0.1 # not a comment"),
                ("user", "alice:secret;"),
            ]
        );
        assert_eq!(
            bad,
            ["--max-allocate-lifetime=5", "p=3600", "channel-l=5"],
            "no dashes, no short letters, no abbreviations in the file"
        );
    }

    #[test]
    fn long_config_lines_are_cut_like_fgets_cuts_them() {
        let mut text = format!("realm={}", "r".repeat(1100)).into_bytes();
        text.extend_from_slice(b"\nmax-bps=5\n");
        let chunks: Vec<usize> = fgets_chunks(&text, 1023).map(<[u8]>::len).collect();
        assert_eq!(chunks, [1023, 1106 - 1023 + 1, 10]);
        let (lines, bad) = parse_conf_file(&text);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].name, "max-bps");
        assert_eq!(
            bad.len(),
            1,
            "the tail of the long line is a line of its own"
        );
    }

    #[test]
    fn c_number_and_boolean_conversions() {
        assert_eq!(atoi("600"), 600);
        assert_eq!(atoi("  42abc"), 42);
        assert_eq!(atoi("=5"), 0);
        assert_eq!(atoi("-7"), -7);
        assert_eq!(atoi(""), 0);
        assert_eq!(atoi("4294967297"), 1, "(int) of a long wraps");
        assert_eq!(strtoul("1000"), 1000);
        assert_eq!(strtoul("-1"), u64::MAX);
        assert_eq!(strtoul("x"), 0);
        assert_eq!(strtoul("99999999999999999999999"), u64::MAX);
        assert_eq!(int_value(None, 600), 600);
        assert_eq!(int_value(Some(""), 300), 300);
        assert_eq!(int_value(Some("0"), 300), 0);
        for t in [
            None,
            Some(""),
            Some("1"),
            Some("yes"),
            Some("true"),
            Some("on"),
        ] {
            assert_eq!(bool_value(t), Some(true), "{t:?}");
        }
        for f in [
            Some("0"),
            Some("no"),
            Some("false"),
            Some("off"),
            Some("Off"),
        ] {
            assert_eq!(bool_value(f), Some(false), "{f:?}");
        }
        assert_eq!(bool_value(Some("maybe")), None);
    }

    #[test]
    fn the_table_is_consistent() {
        for (name, _, val) in LONG_OPTIONS {
            assert!(!name.is_empty() && !name.starts_with('-'));
            if *val < 256 {
                assert!(
                    short_takes_value(*val as u8).is_some(),
                    "{name}: -{} is not in the short options",
                    *val as u8 as char
                );
            }
        }
        assert_eq!(canonical(b'c' as u16), "c");
        assert_eq!(canonical(b'J' as u16), "J");
        assert_eq!(LONG_OPTIONS.len(), 111);
    }
}
