/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * Structs and codes shared by the BPF programs and the Rust loader.
 *
 * The Rust side reaches these through the skeleton's generated `types` module, so this header is
 * the single definition of every map key and value. Rules:
 *   - addresses and ports are in network byte order;
 *   - every struct is explicitly padded and its size asserted, keys are zero-initialised before use
 *     (hash maps compare padding bytes too);
 *   - an address always carries its family and room for 16 bytes, so IPv6 and cross-family paths
 *     fit the same maps.
 */
#ifndef TB_SHARED_H
#define TB_SHARED_H

#include <linux/types.h>
#include <stdbool.h>

/* Map sizes; override at build time (-D) or at load time (the loader may resize before load). */
#ifndef TB_MAX_ALLOCS
#define TB_MAX_ALLOCS 65536
#endif
#ifndef TB_MAX_CHANNELS
#define TB_MAX_CHANNELS 131072
#endif
#ifndef TB_MAX_PERMS
#define TB_MAX_PERMS 131072
#endif
#ifndef TB_MAX_PENDING
#define TB_MAX_PENDING 8192
#endif
#define TB_MAX_TX_PORTS 64
#define TB_MAX_EXTERNAL_IPS 64
#define TB_MAX_LOCAL_ADDRS 1024
#define TB_MAX_TURN_PORTS 8
/* Peers remembered from one CreatePermission request; more are left with the server. */
#define TB_MAX_REQ_PEERS 4

/* Address families as stored in `tb_ep.family` (0 means "no address"). */
#define TB_AF_INET 4
#define TB_AF_INET6 6

/* One transport endpoint: address (with family) and port. 20 bytes. */
struct tb_ep {
	__u8 ip[16];   /* IPv4 in ip[0..4], rest zero */
	__u16 port;    /* network order; 0 where only the address matters */
	__u8 family;   /* TB_AF_INET or TB_AF_INET6 */
	__u8 pad;
};

/* An allocation, identified by the client's 5-tuple as the server sees it (transport UDP). */
struct tb_alloc_key {
	struct tb_ep client;
	struct tb_ep server;
};

struct tb_alloc {
	struct tb_ep relay[2]; /* [1] is the second family of a dual allocation (family 0: none) */
	__u64 id;              /* unique per commit: stale channels of an older allocation never match */
	__u64 expires_ns;      /* bpf_ktime_get_ns() deadline, safety margin already subtracted */
};

/* Client -> peer: ChannelData arriving from `client` at `server` on channel `chan`. */
struct tb_chan_key {
	struct tb_ep client;
	struct tb_ep server;
	__u16 chan;            /* network order, 0x4000..0x7fff */
	__u8 pad[2];
};

/* Peer -> client: a datagram from `peer` to `relay`. */
struct tb_peer_key {
	struct tb_ep peer;
	struct tb_ep relay;
};

/*
 * The value of both channel maps: everything one direction needs to rewrite a packet and to check
 * that the server would still relay it.
 *
 * `cache` holds the last full check (allocation, permission and channel lifetimes): while the
 * global state generation is unchanged and the deadline is ahead, the fast path needs no other
 * lookup. Every commit bumps the generation, so a shortened lifetime is seen at once. Deadline
 * and generation share one word (see state.h) so that no CPU ever sees one without the other.
 */
struct tb_chan {
	struct tb_ep client;   /* the allocation's 5-tuple ... */
	struct tb_ep server;
	struct tb_ep relay;    /* ... its relayed endpoint for this peer's family ... */
	struct tb_ep peer;     /* ... and the bound peer */
	__u16 chan;            /* network order */
	__u8 pad[6];
	__u64 alloc_id;
	__u64 chan_expires_ns; /* the channel's own lifetime */
	__u64 cache;           /* min(allocation, permission, channel) >> 20, << 24 | generation */
	__u64 reserved;
	__u64 packets;         /* datagrams seen by the fast path (drives the spill) */
};

/* A permission: the allocation (by relayed endpoint) and the peer's address (port 0). */
struct tb_perm_key {
	struct tb_ep relay;
	struct tb_ep peer;
};

struct tb_perm {
	__u64 alloc_id;
	__u64 expires_ns;
};

/* A request seen from a client, waiting for the server's answer. */
struct tb_pending_key {
	struct tb_ep client;
	struct tb_ep server;
	__u8 txid[12];
};

struct tb_pending {
	struct tb_ep peers[TB_MAX_REQ_PEERS];
	__u64 created_ns;
	__u16 method;          /* STUN method (0x003 Allocate ...) */
	__u16 chan;            /* ChannelBind: network order */
	__u8 npeers;
	__u8 conflict;         /* the same transaction ID carried different contents: commit nothing */
	__u8 family_sel;       /* Refresh names an address family (REQUESTED-ADDRESS-FAMILY, 0x8032) */
	__u8 peer_overflow;    /* CreatePermission named more peers than `peers` holds */
};

/* Counters: per-CPU array indexed by this enum. Codes are stable and never reused; the Rust side
 * mirrors them by name (src/stats.rs). */
enum tb_stat {
	TB_STAT_CLI2REM = 0,          /* ChannelData relayed client -> peer in XDP */
	TB_STAT_REM2CLI = 1,          /* peer datagram relayed peer -> client in XDP */
	TB_STAT_PASS_NOT_OURS = 2,    /* not IPv4/UDP to a TURN port or from a bound peer */
	TB_STAT_PASS_STUN = 3,        /* STUN or other non-ChannelData to a TURN port */
	TB_STAT_PASS_NO_CHANNEL = 4,  /* ChannelData / peer datagram with no binding */
	TB_STAT_PASS_EXPIRED = 5,     /* allocation, permission or channel expired or gone */
	TB_STAT_PASS_FRAGMENT = 6,
	TB_STAT_PASS_IP_OPTIONS = 7,
	TB_STAT_PASS_VLAN = 8,
	TB_STAT_PASS_BAD_LENGTH = 9,  /* IP, UDP and ChannelData lengths disagree (GSO batches too) */
	TB_STAT_PASS_TTL = 10,
	TB_STAT_PASS_MTU = 11,
	TB_STAT_PASS_NO_NEIGH = 12,
	TB_STAT_PASS_FWD_DISABLED = 13,
	TB_STAT_PASS_FIB_OTHER = 14,  /* no route, local destination, blackhole ... */
	TB_STAT_PASS_EGRESS_UNMANAGED = 15, /* next hop leaves through an interface we are not on */
	TB_STAT_PASS_SPILL = 16,      /* every Nth datagram goes to the server on purpose */
	TB_STAT_PASS_UNSUPPORTED = 17, /* a path not offloaded (e.g. IPv6, cross-family) */
	TB_STAT_PENDING_ADDED = 18,
	TB_STAT_PENDING_CONFLICT = 19,
	TB_STAT_LEARN_ALLOC = 20,
	TB_STAT_LEARN_REFRESH = 21,
	TB_STAT_LEARN_DEALLOC = 22,
	TB_STAT_LEARN_PERM = 23,
	TB_STAT_LEARN_CHANNEL = 24,
	TB_STAT_LEARN_ERROR = 25,     /* error response: the pending request is discarded */
	TB_STAT_LEARN_NO_PENDING = 26, /* a response with no matching request (or a mismatched one) */
	TB_STAT_LEARN_NO_ALLOC = 27,  /* permission/channel for an allocation we never learned */
	TB_STAT_STATE_FULL = 28,      /* committed maps full: the binding stays with the server */
	TB_STAT_RELAY_NOT_LOCAL = 29, /* relayed address neither local nor mapped by --external-ip */
	TB_STAT_STUN_MALFORMED = 30,  /* a STUN message we could not parse: nothing recorded */
	TB_STAT_TC_NOT_LOCAL = 31,    /* a "response" that was forwarded, not sent by this host */
	TB_STAT_ABORTED = 32,         /* a helper failed after the rewrite began (should never happen) */
	TB_STAT_NOT_MIRRORED = 33,    /* a grant we cannot mirror exactly: the allocation is left to the server */
	TB_STAT_TC_FOREIGN = 34,      /* a "response" from a socket not owned by the TURN server's user */
	TB_STAT__MAX
};

_Static_assert(sizeof(struct tb_ep) == 20, "tb_ep layout");
_Static_assert(sizeof(struct tb_alloc_key) == 40, "tb_alloc_key layout");
_Static_assert(sizeof(struct tb_alloc) == 56, "tb_alloc layout");
_Static_assert(sizeof(struct tb_chan_key) == 44, "tb_chan_key layout");
_Static_assert(sizeof(struct tb_peer_key) == 40, "tb_peer_key layout");
_Static_assert(sizeof(struct tb_chan) == 128, "tb_chan layout");
_Static_assert(sizeof(struct tb_perm_key) == 40, "tb_perm_key layout");
_Static_assert(sizeof(struct tb_perm) == 16, "tb_perm layout");
_Static_assert(sizeof(struct tb_pending_key) == 52, "tb_pending_key layout");
_Static_assert(sizeof(struct tb_pending) == 96, "tb_pending layout");

#endif /* TB_SHARED_H */
