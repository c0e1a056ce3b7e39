//! A small blocking TURN client over a plain [`UdpSocket`], and pure TURN message builders.
//!
//! Messages are written and parsed with `stun-types`/`turn-types` (sans-IO). Long-term
//! credentials use MESSAGE-INTEGRITY with HMAC-SHA1: coturn 4.6.1 answers
//! MESSAGE-INTEGRITY-SHA256 with 420. Every request carries a FINGERPRINT.
//!
//! The builders ([`build_request`], [`build_success_response`], [`build_error_response`],
//! [`channel_data`]) make real TURN messages for packet tests that feed them into BPF programs;
//! [`parse_message`] reads them back.
//!
//! [`TurnClient`] does one allocation on one socket (one 5-tuple), as a TURN client does:
//! Allocate (401 challenge, REALM/NONCE, authenticated retry, 438 stale nonce), Refresh,
//! CreatePermission, ChannelBind, and ChannelData in both directions. Every request is
//! retransmitted a bounded number of times with a bounded wait.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use stun_types::attribute::{
    ErrorCode, MessageIntegrity, Nonce, RawAttribute, Realm, Username, XorMappedAddress,
};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageType, MessageWriteExt, MessageWriteVec, Method, TransactionId,
};
use stun_types::prelude::*;
use turn_types::attribute::{
    ChannelNumber, Data as DataAttr, Lifetime, RequestedAddressFamily, RequestedTransport,
    XorPeerAddress, XorRelayedAddress,
};
use turn_types::channel::ChannelData;
use turn_types::AddressFamily;

/// STUN/TURN method numbers (RFC 8489, RFC 8656).
pub const BINDING: u16 = 0x001;
/// Allocate (request 0x0003, success 0x0103, error 0x0113).
pub const ALLOCATE: u16 = 0x003;
/// Refresh (request 0x0004, success 0x0104, error 0x0114).
pub const REFRESH: u16 = 0x004;
/// Send (indication 0x0016).
pub const SEND: u16 = 0x006;
/// Data (indication 0x0017).
pub const DATA: u16 = 0x007;
/// CreatePermission (request 0x0008, success 0x0108, error 0x0118).
pub const CREATE_PERMISSION: u16 = 0x008;
/// ChannelBind (request 0x0009, success 0x0109, error 0x0119).
pub const CHANNEL_BIND: u16 = 0x009;

/// ADDITIONAL-ADDRESS-FAMILY as coturn 4.6.1 numbers it (RFC 8656 says 0x8000, which coturn
/// ignores).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN: u16 = 0x8032;
/// EVEN-PORT (RFC 8656 section 18.8): one byte, its top bit R.
pub const ATTR_EVEN_PORT: u16 = 0x0018;
/// First valid channel number.
pub const CHANNEL_MIN: u16 = 0x4000;
/// Last valid channel number (RFC 5766; RFC 8656 narrows it to 0x4FFF).
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// A 96-bit STUN transaction ID.
pub type TxId = [u8; 12];

/// Address family of a relayed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (0x01 on the wire).
    V4,
    /// IPv6 (0x02 on the wire).
    V6,
}

impl Family {
    fn to_stun(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::IPV4,
            Family::V6 => AddressFamily::IPV6,
        }
    }

    fn from_stun(f: AddressFamily) -> Self {
        match f {
            AddressFamily::IPV4 => Family::V4,
            AddressFamily::IPV6 => Family::V6,
        }
    }

    fn wire(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }
}

/// The STUN attributes the builders write and [`parse_message`] reads. MESSAGE-INTEGRITY and
/// FINGERPRINT are not attributes here: the builders add them themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// XOR-PEER-ADDRESS (0x0012).
    XorPeerAddress(SocketAddr),
    /// XOR-RELAYED-ADDRESS (0x0016).
    XorRelayedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS (0x0020).
    XorMappedAddress(SocketAddr),
    /// LIFETIME (0x000D), seconds.
    Lifetime(u32),
    /// CHANNEL-NUMBER (0x000C).
    ChannelNumber(u16),
    /// REQUESTED-TRANSPORT (0x0019), an IP protocol number (17 = UDP).
    RequestedTransport(u8),
    /// REQUESTED-ADDRESS-FAMILY (0x0017).
    RequestedAddressFamily(Family),
    /// ADDITIONAL-ADDRESS-FAMILY, written as coturn's 0x8032 (see
    /// [`ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN`]); RFC 8656's 0x8000 needs [`Attr::Raw`].
    AdditionalAddressFamily(Family),
    /// DATA (0x0013).
    Data(Vec<u8>),
    /// USERNAME (0x0006).
    Username(String),
    /// REALM (0x0014).
    Realm(String),
    /// NONCE (0x0015).
    Nonce(String),
    /// ERROR-CODE (0x0009).
    ErrorCode {
        /// 300..=699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// Any other attribute, value unpadded.
    Raw {
        /// Attribute type.
        typ: u16,
        /// Attribute value.
        value: Vec<u8>,
    },
}

/// Long-term credentials plus the server's REALM and NONCE, for signing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// USERNAME.
    pub user: String,
    /// Password (never sent; keys the HMAC).
    pub pass: String,
    /// REALM from the server's 401.
    pub realm: String,
    /// NONCE from the server's 401 or 438.
    pub nonce: String,
}

impl Auth {
    fn integrity_credentials(&self) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(self.user.clone(), self.pass.clone(), self.realm.clone()).into()
    }
}

/// Message class of a parsed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Request (type 0x0000 | method).
    Request,
    /// Indication (0x0010).
    Indication,
    /// Success response (0x0100).
    Success,
    /// Error response (0x0110).
    Error,
}

impl Class {
    fn to_stun(self) -> MessageClass {
        match self {
            Class::Request => MessageClass::Request,
            Class::Indication => MessageClass::Indication,
            Class::Success => MessageClass::Success,
            Class::Error => MessageClass::Error,
        }
    }

    fn from_stun(c: MessageClass) -> Self {
        match c {
            MessageClass::Request => Class::Request,
            MessageClass::Indication => Class::Indication,
            MessageClass::Success => Class::Success,
            MessageClass::Error => Class::Error,
        }
    }
}

/// A parsed STUN message (see [`parse_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunMessage {
    /// Request, indication, success or error.
    pub class: Class,
    /// Method number, e.g. [`ALLOCATE`].
    pub method: u16,
    /// Transaction ID.
    pub txid: TxId,
    /// Attributes in wire order, without MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.
    pub attrs: Vec<Attr>,
    /// Whether a MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 attribute is present.
    pub has_integrity: bool,
}

impl StunMessage {
    /// The ERROR-CODE's code and reason, if present.
    pub fn error(&self) -> Option<(u16, &str)> {
        self.attrs.iter().find_map(|a| match a {
            Attr::ErrorCode { code, reason } => Some((*code, reason.as_str())),
            _ => None,
        })
    }

    /// All XOR-RELAYED-ADDRESS values in order (a dual allocation has two).
    pub fn relayed_addrs(&self) -> Vec<SocketAddr> {
        self.attrs
            .iter()
            .filter_map(|a| match a {
                Attr::XorRelayedAddress(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    /// LIFETIME, if present.
    pub fn lifetime(&self) -> Option<u32> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Lifetime(l) => Some(*l),
            _ => None,
        })
    }

    fn string_attr(&self, pick: fn(&Attr) -> Option<&String>) -> Option<String> {
        self.attrs.iter().find_map(pick).cloned()
    }

    /// REALM, if present.
    pub fn realm(&self) -> Option<String> {
        self.string_attr(|a| match a {
            Attr::Realm(s) => Some(s),
            _ => None,
        })
    }

    /// NONCE, if present.
    pub fn nonce(&self) -> Option<String> {
        self.string_attr(|a| match a {
            Attr::Nonce(s) => Some(s),
            _ => None,
        })
    }
}

/// What went wrong in a TURN transaction.
#[derive(Debug)]
pub enum TurnError {
    /// The server answered with an error response.
    Rejected {
        /// STUN error code, e.g. 401, 403, 437, 438.
        code: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// No response after every retransmission.
    Timeout {
        /// Method of the request.
        method: u16,
        /// How many times it was sent.
        tries: u32,
    },
    /// A socket error.
    Io(io::Error),
    /// A malformed or unexpected message (bad integrity, missing attribute, ...).
    Protocol(String),
}

impl TurnError {
    /// The STUN error code, for [`TurnError::Rejected`].
    pub fn code(&self) -> Option<u16> {
        match self {
            TurnError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for TurnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TurnError::Rejected { code, reason } => {
                write!(f, "TURN server rejected the request: {code} {reason}")
            }
            TurnError::Timeout { method, tries } => write!(
                f,
                "no response to TURN {} after {tries} tries",
                method_name(*method)
            ),
            TurnError::Io(e) => write!(f, "TURN socket error: {e}"),
            TurnError::Protocol(s) => write!(f, "TURN protocol error: {s}"),
        }
    }
}

impl std::error::Error for TurnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TurnError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TurnError {
    fn from(e: io::Error) -> Self {
        TurnError::Io(e)
    }
}

/// Result of the client's operations.
pub type Result<T> = std::result::Result<T, TurnError>;

/// Name of a TURN method number, for messages.
pub fn method_name(method: u16) -> &'static str {
    match method {
        BINDING => "Binding",
        ALLOCATE => "Allocate",
        REFRESH => "Refresh",
        SEND => "Send",
        DATA => "Data",
        CREATE_PERMISSION => "CreatePermission",
        CHANNEL_BIND => "ChannelBind",
        _ => "unknown method",
    }
}

/// A fresh random transaction ID.
pub fn new_txid() -> TxId {
    let id: u128 = TransactionId::generate().into();
    id.to_be_bytes()[4..].try_into().expect("12 bytes")
}

fn stun_txid(txid: TxId) -> TransactionId {
    let mut b = [0u8; 16];
    b[4..].copy_from_slice(&txid);
    u128::from_be_bytes(b).into()
}

fn write_attrs(msg: &mut MessageWriteVec, txid: TransactionId, attrs: &[Attr]) {
    for a in attrs {
        let res = match a {
            Attr::XorPeerAddress(s) => msg.add_attribute(&XorPeerAddress::new(*s, txid)),
            Attr::XorRelayedAddress(s) => msg.add_attribute(&XorRelayedAddress::new(*s, txid)),
            Attr::XorMappedAddress(s) => msg.add_attribute(&XorMappedAddress::new(*s, txid)),
            Attr::Lifetime(l) => msg.add_attribute(&Lifetime::new(*l)),
            Attr::ChannelNumber(c) => msg.add_attribute(&ChannelNumber::new(*c)),
            Attr::RequestedTransport(p) => msg.add_attribute(&RequestedTransport::new(*p)),
            Attr::RequestedAddressFamily(f) => {
                msg.add_attribute(&RequestedAddressFamily::new(f.to_stun()))
            }
            Attr::AdditionalAddressFamily(f) => msg.add_attribute(&RawAttribute::new(
                ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN.into(),
                &[f.wire(), 0, 0, 0],
            )),
            Attr::Data(d) => msg.add_attribute(&DataAttr::new(d)),
            Attr::Username(u) => msg.add_attribute(&Username::new(u).expect("USERNAME too long")),
            Attr::Realm(r) => msg.add_attribute(&Realm::new(r).expect("REALM too long")),
            Attr::Nonce(n) => msg.add_attribute(&Nonce::new(n).expect("NONCE too long")),
            Attr::ErrorCode { code, reason } => {
                msg.add_attribute(&ErrorCode::new(*code, reason).expect("code in 300..=699"))
            }
            Attr::Raw { typ, value } => msg.add_attribute(&RawAttribute::new((*typ).into(), value)),
        };
        res.unwrap_or_else(|e| panic!("writing {a:?}: {e}"));
    }
}

/// Builds any STUN message: header, `attrs`, then (with `auth`) USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY (HMAC-SHA1), then FINGERPRINT.
///
/// # Panics
/// On attributes that cannot be encoded (oversized strings, error codes outside 300..=699).
pub fn build_message(
    class: Class,
    method: u16,
    txid: TxId,
    attrs: &[Attr],
    auth: Option<&Auth>,
) -> Vec<u8> {
    let stun_id = stun_txid(txid);
    let mtype = MessageType::from_class_method(class.to_stun(), Method::new(method));
    let mut msg = Message::builder(mtype, stun_id, MessageWriteVec::new());
    write_attrs(&mut msg, stun_id, attrs);
    if let Some(auth) = auth {
        write_attrs(
            &mut msg,
            stun_id,
            &[
                Attr::Username(auth.user.clone()),
                Attr::Realm(auth.realm.clone()),
                Attr::Nonce(auth.nonce.clone()),
            ],
        );
        msg.add_message_integrity(&auth.integrity_credentials(), IntegrityAlgorithm::Sha1)
            .expect("adding MESSAGE-INTEGRITY");
    }
    msg.add_fingerprint().expect("adding FINGERPRINT");
    msg.finish()
}

/// A request of `method` with `attrs`, signed when `auth` is given, with FINGERPRINT.
pub fn build_request(method: u16, txid: TxId, attrs: &[Attr], auth: Option<&Auth>) -> Vec<u8> {
    build_message(Class::Request, method, txid, attrs, auth)
}

/// A success response (e.g. 0x0103) with `attrs` and FINGERPRINT, unsigned.
pub fn build_success_response(method: u16, txid: TxId, attrs: &[Attr]) -> Vec<u8> {
    build_message(Class::Success, method, txid, attrs, None)
}

/// An error response (e.g. 0x0113) with ERROR-CODE `code` (standard reason) and FINGERPRINT.
pub fn build_error_response(method: u16, txid: TxId, code: u16) -> Vec<u8> {
    let reason = ErrorCode::default_reason_for_code(code).to_owned();
    build_message(
        Class::Error,
        method,
        txid,
        &[Attr::ErrorCode { code, reason }],
        None,
    )
}

/// A ChannelData frame: channel, length of `payload`, `payload`, and with `pad_to_4` zero bytes
/// up to a multiple of 4 (optional over UDP; the length field never counts them).
///
/// # Panics
/// When `payload` is longer than 65535 bytes.
pub fn channel_data(channel: u16, payload: &[u8], pad_to_4: bool) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("ChannelData payload fits in 16 bits");
    let total = 4 + payload.len();
    let padded = if pad_to_4 {
        total.next_multiple_of(4)
    } else {
        total
    };
    let mut out = vec![0u8; padded];
    ChannelData::new(channel, payload).write_into_unchecked(&mut out[..total]);
    debug_assert_eq!(out[2..4], len.to_be_bytes());
    out
}

/// Channel and payload of a ChannelData frame, if `frame` is one: channel in
/// [`CHANNEL_MIN`]..=[`CHANNEL_MAX`] and a length that fits (padding after it is allowed).
pub fn parse_channel_data(frame: &[u8]) -> Option<(u16, &[u8])> {
    let cd = ChannelData::parse(frame).ok()?;
    (CHANNEL_MIN..=CHANNEL_MAX)
        .contains(&cd.id())
        .then(|| (cd.id(), &frame[4..4 + cd.data().len()]))
}

fn bad(e: impl std::fmt::Display) -> TurnError {
    TurnError::Protocol(e.to_string())
}

fn attr_from_raw(raw: &RawAttribute<'_>, txid: TransactionId) -> Result<Option<Attr>> {
    let typ = raw.get_type();
    let attr = match typ {
        MessageIntegrity::TYPE
        | stun_types::attribute::MessageIntegritySha256::TYPE
        | stun_types::attribute::Fingerprint::TYPE => return Ok(None),
        XorPeerAddress::TYPE => {
            Attr::XorPeerAddress(XorPeerAddress::try_from(raw).map_err(bad)?.addr(txid))
        }
        XorRelayedAddress::TYPE => {
            Attr::XorRelayedAddress(XorRelayedAddress::try_from(raw).map_err(bad)?.addr(txid))
        }
        XorMappedAddress::TYPE => {
            Attr::XorMappedAddress(XorMappedAddress::try_from(raw).map_err(bad)?.addr(txid))
        }
        Lifetime::TYPE => Attr::Lifetime(Lifetime::try_from(raw).map_err(bad)?.seconds()),
        ChannelNumber::TYPE => {
            Attr::ChannelNumber(ChannelNumber::try_from(raw).map_err(bad)?.channel())
        }
        RequestedTransport::TYPE => {
            Attr::RequestedTransport(RequestedTransport::try_from(raw).map_err(bad)?.protocol())
        }
        RequestedAddressFamily::TYPE => Attr::RequestedAddressFamily(Family::from_stun(
            RequestedAddressFamily::try_from(raw).map_err(bad)?.family(),
        )),
        DataAttr::TYPE => Attr::Data(
            DataAttr::try_from(raw.clone())
                .map_err(bad)?
                .data()
                .to_vec(),
        ),
        Username::TYPE => {
            Attr::Username(Username::try_from(raw).map_err(bad)?.username().to_owned())
        }
        Realm::TYPE => Attr::Realm(Realm::try_from(raw).map_err(bad)?.realm().to_owned()),
        Nonce::TYPE => Attr::Nonce(Nonce::try_from(raw).map_err(bad)?.nonce().to_owned()),
        ErrorCode::TYPE => {
            let e = ErrorCode::try_from(raw).map_err(bad)?;
            Attr::ErrorCode {
                code: e.code(),
                reason: e.reason().to_owned(),
            }
        }
        t if t.value() == ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN => {
            let family = match raw.value.first() {
                Some(0x01) => Family::V4,
                Some(0x02) => Family::V6,
                _ => return Err(bad("bad ADDITIONAL-ADDRESS-FAMILY value")),
            };
            Attr::AdditionalAddressFamily(family)
        }
        t => Attr::Raw {
            typ: t.value(),
            value: raw.value.to_vec(),
        },
    };
    Ok(Some(attr))
}

/// Parses a STUN message (checking FINGERPRINT if present; not MESSAGE-INTEGRITY, which needs
/// credentials: see [`verify_integrity`]).
pub fn parse_message(bytes: &[u8]) -> Result<StunMessage> {
    let msg = Message::from_bytes(bytes).map_err(|e| bad(format!("not a STUN message: {e}")))?;
    let stun_id = msg.transaction_id();
    let mut attrs = Vec::new();
    let mut has_integrity = false;
    for (_, raw) in msg.iter_attributes() {
        let t = raw.get_type();
        if t == MessageIntegrity::TYPE || t == stun_types::attribute::MessageIntegritySha256::TYPE {
            has_integrity = true;
        }
        if let Some(a) = attr_from_raw(&raw, stun_id)? {
            attrs.push(a);
        }
    }
    let id: u128 = stun_id.into();
    Ok(StunMessage {
        class: Class::from_stun(msg.class()),
        method: msg.method().value(),
        txid: id.to_be_bytes()[4..].try_into().expect("12 bytes"),
        attrs,
        has_integrity,
    })
}

/// Checks the MESSAGE-INTEGRITY of `bytes` with long-term credentials `user`/`pass`/`realm`.
pub fn verify_integrity(bytes: &[u8], user: &str, pass: &str, realm: &str) -> Result<()> {
    let msg = Message::from_bytes(bytes).map_err(bad)?;
    let creds: MessageIntegrityCredentials =
        LongTermKeyCredentials::new(user.into(), pass.into(), realm.into()).into();
    msg.validate_integrity(&creds)
        .map(|_| ())
        .map_err(|e| bad(format!("MESSAGE-INTEGRITY check failed: {e}")))
}

/// An allocation the server granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The (first) XOR-RELAYED-ADDRESS.
    pub relayed: SocketAddr,
    /// LIFETIME granted, seconds.
    pub lifetime: u32,
    /// The second XOR-RELAYED-ADDRESS of a dual-stack allocation.
    pub additional_relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS: the client's address as the server sees it.
    pub mapped: Option<SocketAddr>,
}

/// Which relayed address family to ask for in an Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFamily {
    /// No family attribute: IPv4 (RFC 8656's default, and coturn's, whatever the client's
    /// own family).
    Default,
    /// REQUESTED-ADDRESS-FAMILY IPv4.
    V4,
    /// REQUESTED-ADDRESS-FAMILY IPv6.
    V6,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6 (coturn's 0x8032): an IPv4 and an IPv6 relayed address.
    Dual,
}

/// Frames the client keeps that arrived while it waited for a response.
const MAX_PENDING: usize = 4096;

/// A blocking TURN client on one UDP socket: one allocation on one server.
#[derive(Debug)]
pub struct TurnClient {
    sock: UdpSocket,
    server: SocketAddr,
    user: String,
    pass: String,
    realm: Option<String>,
    nonce: Option<String>,
    last_txid: Option<TxId>,
    allocation: Option<Allocation>,
    tries: u32,
    timeout: Duration,
    /// ChannelData frames from the server that arrived during a transaction.
    pending: Mutex<VecDeque<Vec<u8>>>,
}

impl TurnClient {
    /// A client for `server` on `sock` (bound, e.g. in the client namespace) with long-term
    /// credentials; it sends nothing yet. Requests are sent up to 3 times, 500 ms apart.
    pub fn new(sock: UdpSocket, server: SocketAddr, user: &str, pass: &str) -> Self {
        TurnClient {
            sock,
            server,
            user: user.to_owned(),
            pass: pass.to_owned(),
            realm: None,
            nonce: None,
            last_txid: None,
            allocation: None,
            tries: 3,
            timeout: Duration::from_millis(500),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// Sets how often a request is sent and how long to wait for its response each time.
    pub fn set_retransmit(&mut self, tries: u32, timeout: Duration) {
        self.tries = tries.max(1);
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The underlying socket (e.g. for a load generator sending on the same 5-tuple).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Transaction ID of the last request sent.
    pub fn last_transaction_id(&self) -> Option<TxId> {
        self.last_txid
    }

    /// The current allocation, if any.
    pub fn allocation(&self) -> Option<Allocation> {
        self.allocation
    }

    /// REALM and NONCE learned from the server, once challenged.
    pub fn realm_nonce(&self) -> Option<(&str, &str)> {
        Some((self.realm.as_deref()?, self.nonce.as_deref()?))
    }

    /// Allocates a relayed address (UDP), lifetime as requested (server default if `None`).
    pub fn allocate(&mut self, lifetime: Option<u32>) -> Result<Allocation> {
        self.allocate_family(lifetime, RelayFamily::Default)
    }

    /// Like [`TurnClient::allocate`], asking for a relayed address family.
    pub fn allocate_family(
        &mut self,
        lifetime: Option<u32>,
        family: RelayFamily,
    ) -> Result<Allocation> {
        let mut attrs = vec![Attr::RequestedTransport(RequestedTransport::UDP)];
        match family {
            RelayFamily::Default => {}
            RelayFamily::V4 => attrs.push(Attr::RequestedAddressFamily(Family::V4)),
            RelayFamily::V6 => attrs.push(Attr::RequestedAddressFamily(Family::V6)),
            RelayFamily::Dual => attrs.push(Attr::AdditionalAddressFamily(Family::V6)),
        }
        if let Some(l) = lifetime {
            attrs.push(Attr::Lifetime(l));
        }
        self.allocate_with(&attrs)
    }

    /// Like [`TurnClient::allocate`], with EVEN-PORT (`reserve`: its R bit, asking the server to
    /// keep the next port higher for a later allocation too).
    pub fn allocate_even_port(&mut self, reserve: bool) -> Result<Allocation> {
        self.allocate_with(&[
            Attr::RequestedTransport(RequestedTransport::UDP),
            Attr::Raw {
                typ: ATTR_EVEN_PORT,
                value: vec![if reserve { 0x80 } else { 0 }],
            },
        ])
    }

    /// An Allocate with exactly `attrs` (and the credentials).
    fn allocate_with(&mut self, attrs: &[Attr]) -> Result<Allocation> {
        let resp = self.transact(ALLOCATE, attrs)?;
        let relayed = resp.relayed_addrs();
        let first = *relayed
            .first()
            .ok_or_else(|| bad("Allocate success without XOR-RELAYED-ADDRESS"))?;
        let alloc = Allocation {
            relayed: first,
            lifetime: resp
                .lifetime()
                .ok_or_else(|| bad("Allocate success without LIFETIME"))?,
            additional_relayed: relayed.get(1).copied(),
            mapped: resp.attrs.iter().find_map(|a| match a {
                Attr::XorMappedAddress(s) => Some(*s),
                _ => None,
            }),
        };
        self.allocation = Some(alloc);
        Ok(alloc)
    }

    /// Refreshes the allocation; returns the LIFETIME granted (0 deletes it).
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32> {
        let resp = self.transact(REFRESH, &[Attr::Lifetime(lifetime)])?;
        let granted = resp
            .lifetime()
            .ok_or_else(|| bad("Refresh success without LIFETIME"))?;
        if granted == 0 {
            self.allocation = None;
        } else if let Some(a) = self.allocation.as_mut() {
            a.lifetime = granted;
        }
        Ok(granted)
    }

    /// Installs (or refreshes) permissions for the IP addresses of `peers`, in one request.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<()> {
        let attrs: Vec<Attr> = peers.iter().map(|p| Attr::XorPeerAddress(*p)).collect();
        self.transact(CREATE_PERMISSION, &attrs).map(|_| ())
    }

    /// Binds `channel` (0x4000..=0x7FFF) to `peer` (or refreshes that binding).
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<()> {
        self.transact(
            CHANNEL_BIND,
            &[Attr::ChannelNumber(channel), Attr::XorPeerAddress(peer)],
        )
        .map(|_| ())
    }

    /// Sends `payload` to `peer` in a Send indication (needs a permission; no response).
    pub fn send_indication(&self, peer: SocketAddr, payload: &[u8]) -> Result<()> {
        let msg = build_message(
            Class::Indication,
            SEND,
            new_txid(),
            &[Attr::XorPeerAddress(peer), Attr::Data(payload.to_vec())],
            None,
        );
        self.send_raw(&msg)
    }

    /// Sends `payload` on `channel` as one unpadded ChannelData datagram.
    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) -> Result<()> {
        self.send_raw(&channel_data(channel, payload, false))
    }

    /// Sends `bytes` to the server as one datagram, as they are.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let n = self.sock.send_to(bytes, self.server)?;
        if n != bytes.len() {
            return Err(bad(format!("sent {n} of {} bytes", bytes.len())));
        }
        Ok(())
    }

    /// Waits up to `timeout` for a ChannelData frame from the server and copies its payload to
    /// the start of `buf`; returns its channel and payload length, or `None` on timeout. Other
    /// datagrams (STUN messages, anything not from the server) are skipped. `buf` must hold the
    /// whole datagram (4 + payload bytes).
    pub fn recv_channel_data(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<(u16, usize)>> {
        if let Some(frame) = self.pending.lock().expect("pending lock").pop_front() {
            let (channel, payload) = parse_channel_data(&frame).expect("only ChannelData kept");
            let dst = buf
                .get_mut(..payload.len())
                .ok_or_else(|| bad("receive buffer too small for a ChannelData payload"))?;
            dst.copy_from_slice(payload);
            return Ok(Some((channel, payload.len())));
        }
        let deadline = Instant::now() + timeout;
        while let Some((n, from)) = self.recv_until(buf, deadline)? {
            if from != self.server {
                continue;
            }
            let Some((channel, payload)) = parse_channel_data(&buf[..n]) else {
                // A full buffer may hold the start of a longer datagram the kernel cut.
                if n == buf.len() && n >= 2 && (0x40..=0x7F).contains(&buf[0]) {
                    return Err(bad("receive buffer too small for a ChannelData datagram"));
                }
                continue;
            };
            let len = payload.len();
            buf.copy_within(4..4 + len, 0);
            return Ok(Some((channel, len)));
        }
        Ok(None)
    }

    /// Waits up to `timeout` for any datagram; returns its length and sender.
    pub fn recv_raw(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<(usize, SocketAddr)>> {
        self.recv_until(buf, Instant::now() + timeout)
    }

    fn recv_until(&self, buf: &mut [u8], deadline: Instant) -> Result<Option<(usize, SocketAddr)>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match self.sock.recv_from(buf) {
                Ok(r) => return Ok(Some(r)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn auth(&self) -> Option<Auth> {
        Some(Auth {
            user: self.user.clone(),
            pass: self.pass.clone(),
            realm: self.realm.clone()?,
            nonce: self.nonce.clone()?,
        })
    }

    /// One request with the authentication dance: an unauthenticated 401 teaches REALM and
    /// NONCE, a 438 a new NONCE; both are retried (bounded). Returns the success response.
    fn transact(&mut self, method: u16, attrs: &[Attr]) -> Result<StunMessage> {
        for _round in 0..4 {
            let auth = self.auth();
            let txid = new_txid();
            let req = build_request(method, txid, attrs, auth.as_ref());
            self.last_txid = Some(txid);
            let (resp, bytes) = self.exchange(method, &req, txid)?;
            match resp.class {
                Class::Success => {
                    if let Some(a) = &auth {
                        if resp.has_integrity {
                            verify_integrity(&bytes, &a.user, &a.pass, &a.realm)?;
                        }
                    }
                    return Ok(resp);
                }
                Class::Error => {
                    let (code, reason) = resp
                        .error()
                        .map(|(c, r)| (c, r.to_owned()))
                        .ok_or_else(|| bad("error response without ERROR-CODE"))?;
                    let learn = (code == 401 && auth.is_none()) || code == 438;
                    match (learn, resp.realm(), resp.nonce()) {
                        (true, realm, Some(nonce)) => {
                            if let Some(realm) = realm {
                                self.realm = Some(realm);
                            }
                            self.nonce = Some(nonce);
                            if self.realm.is_none() {
                                return Err(TurnError::Rejected { code, reason });
                            }
                        }
                        _ => return Err(TurnError::Rejected { code, reason }),
                    }
                }
                _ => return Err(bad("response of an unexpected class")),
            }
        }
        Err(bad(format!(
            "{} kept being challenged (401/438)",
            method_name(method)
        )))
    }

    /// Sends `req` and waits for the response with `txid`, retransmitting; ChannelData that
    /// arrives meanwhile is kept for [`TurnClient::recv_channel_data`].
    fn exchange(&self, method: u16, req: &[u8], txid: TxId) -> Result<(StunMessage, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        for _ in 0..self.tries {
            self.send_raw(req)?;
            let deadline = Instant::now() + self.timeout;
            while let Some((n, from)) = self.recv_until(&mut buf, deadline)? {
                if from != self.server {
                    continue;
                }
                let frame = &buf[..n];
                if parse_channel_data(frame).is_some() {
                    let mut pending = self.pending.lock().expect("pending lock");
                    if pending.len() < MAX_PENDING {
                        pending.push_back(frame.to_vec());
                    }
                    continue;
                }
                let Ok(msg) = parse_message(frame) else {
                    continue;
                };
                if msg.txid == txid && matches!(msg.class, Class::Success | Class::Error) {
                    if msg.method != method {
                        return Err(bad(format!(
                            "response to {} has method {:#x}",
                            method_name(method),
                            msg.method
                        )));
                    }
                    return Ok((msg, frame.to_vec()));
                }
            }
        }
        Err(TurnError::Timeout {
            method,
            tries: self.tries,
        })
    }
}

/// Echoes every datagram on `sock` back to its sender until `stop` is set (checked at least
/// every 50 ms); returns how many it echoed.
pub fn echo_peer(sock: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    thread::Builder::new()
        .name("echo-peer".into())
        .spawn(move || {
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("setting a read timeout");
            let mut buf = vec![0u8; 65536];
            let mut echoed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if sock.send_to(&buf[..n], from).is_ok() {
                            echoed += 1;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => panic!("echo peer: {e}"),
                }
            }
            echoed
        })
        .expect("spawning the echo peer")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TxId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn auth() -> Auth {
        Auth {
            user: "alice".into(),
            pass: "alice-secret".into(),
            realm: "turn-bpf.test".into(),
            nonce: "abcdef0123456789".into(),
        }
    }

    #[test]
    fn header_layout_of_a_request() {
        let m = build_request(CHANNEL_BIND, TXID, &[Attr::ChannelNumber(0x4000)], None);
        assert_eq!(&m[0..2], &[0x00, 0x09]);
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len() - 20);
        assert_eq!(&m[4..8], &[0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(&m[8..20], &TXID);
        // CHANNEL-NUMBER: type 0x000C, length 4, channel, RFFU.
        assert_eq!(
            &m[20..28],
            &[0x00, 0x0C, 0x00, 0x04, 0x40, 0x00, 0x00, 0x00]
        );
        // FINGERPRINT last.
        assert_eq!(&m[m.len() - 8..m.len() - 4], &[0x80, 0x28, 0x00, 0x04]);
    }

    #[test]
    fn response_types_on_the_wire() {
        for (method, ok, err) in [
            (ALLOCATE, 0x0103u16, 0x0113u16),
            (REFRESH, 0x0104, 0x0114),
            (CREATE_PERMISSION, 0x0108, 0x0118),
            (CHANNEL_BIND, 0x0109, 0x0119),
        ] {
            let s = build_success_response(method, TXID, &[]);
            let e = build_error_response(method, TXID, 403);
            assert_eq!(u16::from_be_bytes([s[0], s[1]]), ok);
            assert_eq!(u16::from_be_bytes([e[0], e[1]]), err);
        }
    }

    #[test]
    fn request_round_trips_through_the_crates() {
        let peer = v4("198.51.100.2:40000");
        let attrs = [
            Attr::ChannelNumber(0x4001),
            Attr::XorPeerAddress(peer),
            Attr::Lifetime(600),
            Attr::RequestedTransport(17),
            Attr::RequestedAddressFamily(Family::V6),
            Attr::AdditionalAddressFamily(Family::V6),
            Attr::Data(vec![1, 2, 3]),
            Attr::Raw {
                typ: 0x8022,
                value: b"x".to_vec(),
            },
        ];
        let bytes = build_request(CHANNEL_BIND, TXID, &attrs, None);

        // The crates' own parsers see what we meant.
        let msg = Message::from_bytes(&bytes).unwrap();
        assert!(msg.has_class(MessageClass::Request));
        assert_eq!(msg.method(), turn_types::message::CHANNEL_BIND);
        assert_eq!(msg.attribute::<ChannelNumber>().unwrap().channel(), 0x4001);
        let xpa = msg.attribute::<XorPeerAddress>().unwrap();
        assert_eq!(xpa.addr(msg.transaction_id()), peer);
        assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 600);
        let raw = msg
            .raw_attribute(ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN.into())
            .unwrap();
        assert_eq!(&raw.value[..], &[0x02, 0, 0, 0]);

        // And ours.
        let parsed = parse_message(&bytes).unwrap();
        assert_eq!(parsed.class, Class::Request);
        assert_eq!(parsed.method, CHANNEL_BIND);
        assert_eq!(parsed.txid, TXID);
        assert_eq!(parsed.attrs, attrs);
        assert!(!parsed.has_integrity);
    }

    #[test]
    fn signed_request_verifies_with_the_right_password_only() {
        let a = auth();
        let bytes = build_request(ALLOCATE, TXID, &[Attr::RequestedTransport(17)], Some(&a));
        let parsed = parse_message(&bytes).unwrap();
        assert!(parsed.has_integrity);
        assert_eq!(parsed.realm().as_deref(), Some("turn-bpf.test"));
        assert_eq!(parsed.nonce().as_deref(), Some("abcdef0123456789"));
        assert!(parsed.attrs.contains(&Attr::Username("alice".into())));
        verify_integrity(&bytes, "alice", "alice-secret", "turn-bpf.test").unwrap();
        assert!(verify_integrity(&bytes, "alice", "wrong", "turn-bpf.test").is_err());
        // SHA1 integrity, not SHA256 (coturn 4.6.1 rejects the latter).
        let msg = Message::from_bytes(&bytes).unwrap();
        assert!(msg.has_attribute(MessageIntegrity::TYPE));
        assert!(!msg.has_attribute(stun_types::attribute::MessageIntegritySha256::TYPE));
    }

    #[test]
    fn allocate_success_round_trips_with_two_relayed_addresses() {
        let r4 = v4("198.51.100.1:50000");
        let r6: SocketAddr = "[2001:db8:2::1]:50002".parse().unwrap();
        let mapped = v4("192.0.2.2:40000");
        let attrs = [
            Attr::XorRelayedAddress(r4),
            Attr::XorRelayedAddress(r6),
            Attr::Lifetime(3600),
            Attr::XorMappedAddress(mapped),
        ];
        let bytes = build_success_response(ALLOCATE, TXID, &attrs);
        let msg = Message::from_bytes(&bytes).unwrap();
        assert!(msg.has_class(MessageClass::Success));
        let id = msg.transaction_id();
        assert_eq!(
            msg.nth_attribute::<XorRelayedAddress>(0).unwrap().addr(id),
            r4
        );
        assert_eq!(
            msg.nth_attribute::<XorRelayedAddress>(1).unwrap().addr(id),
            r6
        );
        let parsed = parse_message(&bytes).unwrap();
        assert_eq!(parsed.class, Class::Success);
        assert_eq!(parsed.relayed_addrs(), vec![r4, r6]);
        assert_eq!(parsed.lifetime(), Some(3600));
        assert_eq!(parsed.attrs, attrs);
    }

    #[test]
    fn error_response_carries_the_code() {
        let bytes = build_error_response(CREATE_PERMISSION, TXID, 403);
        let msg = Message::from_bytes(&bytes).unwrap();
        assert!(msg.has_class(MessageClass::Error));
        assert_eq!(msg.attribute::<ErrorCode>().unwrap().code(), 403);
        let parsed = parse_message(&bytes).unwrap();
        assert_eq!(parsed.error().map(|(c, _)| c), Some(403));
        assert_eq!(parsed.method, CREATE_PERMISSION);
    }

    #[test]
    fn xor_addresses_depend_on_the_transaction_id() {
        let peer = v4("198.51.100.2:40000");
        let other = [0xEE; 12];
        let a = build_request(CREATE_PERMISSION, TXID, &[Attr::XorPeerAddress(peer)], None);
        let b = build_request(
            CREATE_PERMISSION,
            other,
            &[Attr::XorPeerAddress(peer)],
            None,
        );
        // IPv4 XOR uses only the cookie: same bytes. IPv6 also uses the transaction ID.
        assert_eq!(a[20..32], b[20..32]);
        let p6: SocketAddr = "[2001:db8:2::2]:40000".parse().unwrap();
        let a = build_request(CREATE_PERMISSION, TXID, &[Attr::XorPeerAddress(p6)], None);
        let b = build_request(CREATE_PERMISSION, other, &[Attr::XorPeerAddress(p6)], None);
        assert_ne!(a[20..44], b[20..44]);
        assert_eq!(parse_message(&b).unwrap().attrs, [Attr::XorPeerAddress(p6)]);
    }

    #[test]
    fn channel_data_layout_and_padding() {
        assert_eq!(channel_data(0x4000, &[], false), [0x40, 0x00, 0x00, 0x00]);
        assert_eq!(
            channel_data(0x4001, &[0xAA, 0xBB, 0xCC], false),
            [0x40, 0x01, 0x00, 0x03, 0xAA, 0xBB, 0xCC]
        );
        assert_eq!(
            channel_data(0x4001, &[0xAA, 0xBB, 0xCC], true),
            [0x40, 0x01, 0x00, 0x03, 0xAA, 0xBB, 0xCC, 0x00]
        );
        for len in 0..=9usize {
            let payload: Vec<u8> = (0..len as u8).collect();
            let unpadded = channel_data(0x7FFF, &payload, false);
            let padded = channel_data(0x7FFF, &payload, true);
            assert_eq!(unpadded.len(), 4 + len);
            assert_eq!(padded.len() % 4, 0);
            assert!(padded.len() - unpadded.len() < 4);
            assert_eq!(&padded[..unpadded.len()], &unpadded[..]);
            assert!(padded[unpadded.len()..].iter().all(|&b| b == 0));
            // The length field never counts padding, and both parse to the same payload.
            assert_eq!(u16::from_be_bytes([padded[2], padded[3]]) as usize, len);
            assert_eq!(parse_channel_data(&padded), Some((0x7FFF, &payload[..])));
            assert_eq!(parse_channel_data(&unpadded), Some((0x7FFF, &payload[..])));
            let crate_view = ChannelData::parse(&padded).unwrap();
            assert_eq!(crate_view.data(), &payload[..]);
        }
    }

    #[test]
    fn parse_channel_data_rejects_what_is_not_channel_data() {
        // Truncated: length says 8, 2 bytes follow.
        assert_eq!(parse_channel_data(&[0x40, 0x00, 0x00, 0x08, 1, 2]), None);
        // Channel out of range (0x8000 is past RFC 5766's 0x7FFF).
        assert_eq!(parse_channel_data(&[0x80, 0x00, 0x00, 0x00]), None);
        // A STUN message is not ChannelData.
        assert_eq!(
            parse_channel_data(&build_request(REFRESH, TXID, &[], None)),
            None
        );
        assert_eq!(parse_channel_data(&[0x40]), None);
    }

    #[test]
    fn transaction_ids_are_random() {
        assert_ne!(new_txid(), new_txid());
    }

    #[test]
    fn error_codes_are_exposed() {
        let e = TurnError::Rejected {
            code: 403,
            reason: "Forbidden".into(),
        };
        assert_eq!(e.code(), Some(403));
        assert!(e.to_string().contains("403"));
        assert_eq!(
            TurnError::Timeout {
                method: ALLOCATE,
                tries: 3
            }
            .code(),
            None
        );
    }

    #[test]
    fn client_against_a_scripted_server_on_loopback() {
        // A fake server: 401 with REALM/NONCE, then 438 with a new NONCE, then success;
        // checks that the retried request is signed with the newest NONCE.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = server.local_addr().unwrap();
        let client_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fake = thread::spawn(move || {
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let mut step = 0;
            loop {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let req = parse_message(&buf[..n]).unwrap();
                let reply = match step {
                    0 => {
                        assert!(!req.has_integrity);
                        build_message(
                            Class::Error,
                            ALLOCATE,
                            req.txid,
                            &[
                                Attr::ErrorCode {
                                    code: 401,
                                    reason: "Unauthorized".into(),
                                },
                                Attr::Realm("turn-bpf.test".into()),
                                Attr::Nonce("n1".into()),
                            ],
                            None,
                        )
                    }
                    1 => {
                        assert_eq!(req.nonce().as_deref(), Some("n1"));
                        verify_integrity(&buf[..n], "alice", "alice-secret", "turn-bpf.test")
                            .unwrap();
                        build_message(
                            Class::Error,
                            ALLOCATE,
                            req.txid,
                            &[
                                Attr::ErrorCode {
                                    code: 438,
                                    reason: "Stale Nonce".into(),
                                },
                                Attr::Nonce("n2".into()),
                            ],
                            None,
                        )
                    }
                    _ => {
                        assert_eq!(req.nonce().as_deref(), Some("n2"));
                        // ChannelData before the response must be kept, not lost.
                        server
                            .send_to(&channel_data(0x4000, b"early", false), from)
                            .unwrap();
                        build_message(
                            Class::Success,
                            ALLOCATE,
                            req.txid,
                            &[
                                Attr::XorRelayedAddress(v4("198.51.100.1:50000")),
                                Attr::Lifetime(600),
                            ],
                            Some(&Auth {
                                nonce: "n2".into(),
                                ..auth()
                            }),
                        )
                    }
                };
                server.send_to(&reply, from).unwrap();
                step += 1;
                if step == 3 {
                    break;
                }
            }
        });
        let mut c = TurnClient::new(client_sock, server_addr, "alice", "alice-secret");
        let alloc = c.allocate(None).unwrap();
        assert_eq!(alloc.relayed, v4("198.51.100.1:50000"));
        assert_eq!(alloc.lifetime, 600);
        assert_eq!(c.realm_nonce(), Some(("turn-bpf.test", "n2")));
        let mut buf = [0u8; 64];
        let got = c
            .recv_channel_data(&mut buf, Duration::from_millis(100))
            .unwrap();
        assert_eq!(got, Some((0x4000, 5)));
        assert_eq!(&buf[..5], b"early");
        fake.join().unwrap();
    }

    #[test]
    fn recv_channel_data_filters_and_checks_the_buffer() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = sock.local_addr().unwrap();
        let c = TurnClient::new(sock, server.local_addr().unwrap(), "alice", "x");
        // Skipped: ChannelData from someone else, a STUN message; kept: padded ChannelData.
        stranger
            .send_to(&channel_data(0x4000, b"spoof", false), me)
            .unwrap();
        server
            .send_to(&build_success_response(REFRESH, TXID, &[]), me)
            .unwrap();
        server
            .send_to(&channel_data(0x4002, b"abc", true), me)
            .unwrap();
        let mut buf = [0u8; 64];
        let got = c
            .recv_channel_data(&mut buf, Duration::from_secs(1))
            .unwrap();
        assert_eq!(got, Some((0x4002, 3)));
        assert_eq!(&buf[..3], b"abc");
        // A datagram larger than the buffer is an error, not a silent skip.
        server
            .send_to(&channel_data(0x4000, &[7; 100], false), me)
            .unwrap();
        let err = c
            .recv_channel_data(&mut buf, Duration::from_secs(1))
            .unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
        // Nothing more: a timeout is Ok(None).
        assert_eq!(
            c.recv_channel_data(&mut buf, Duration::from_millis(30))
                .unwrap(),
            None
        );
    }

    #[test]
    fn client_times_out_without_a_server() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = TurnClient::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            silent.local_addr().unwrap(),
            "alice",
            "x",
        );
        c.set_retransmit(2, Duration::from_millis(20));
        let t0 = Instant::now();
        let err = c.allocate(None).unwrap_err();
        assert!(matches!(
            err,
            TurnError::Timeout {
                method: ALLOCATE,
                tries: 2
            }
        ));
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Both transmissions reached the "server", the same transaction each time.
        let mut buf = [0u8; 512];
        silent
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (n1, _) = silent.recv_from(&mut buf).unwrap();
        let first = buf[..n1].to_vec();
        let (n2, _) = silent.recv_from(&mut buf).unwrap();
        assert_eq!(&first[..], &buf[..n2]);
        assert_eq!(&first[8..20], &c.last_transaction_id().unwrap());
    }

    #[test]
    fn echo_peer_echoes_and_counts() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let h = echo_peer(peer, stop.clone());
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        for i in 0..5u8 {
            s.send_to(&[i; 7], peer_addr).unwrap();
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!((n, from), (7, peer_addr));
            assert_eq!(buf[..7], [i; 7]);
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(h.join().unwrap(), 5);
    }
}
