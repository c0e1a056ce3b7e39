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
#define TB_MAX_PENDING 65536
#endif
/* Slots of the blind-spot table: a hash of the (client address, server address) pair picks one. */
#ifndef TB_BLIND_SLOTS
#define TB_BLIND_SLOTS 65536
#endif
/* Prefixes of peer addresses the server's static policy refuses. */
#ifndef TB_MAX_PEER_POLICY
#define TB_MAX_PEER_POLICY 4096
#endif
/* How long after it was first seen a recorded request can still be answered (and how far a
 * blind spot reaches back and forward), in ms; overridable at load time. */
#define TB_PENDING_LIFETIME_MS 10000
/* Largest STUN request the recorder checksums and records; a longer one is a blind spot. */
#define TB_MAX_STUN_REQUEST 1280
#define TB_MAX_TX_PORTS 64
#define TB_MAX_EXTERNAL_IPS 64
#define TB_MAX_LOCAL_ADDRS 1024
#define TB_MAX_TURN_PORTS 8
/* The TURN server's sockets whose responses tc_snoop trusts (coturn: one listening socket per
 * thread, listening address and port). */
#define TB_MAX_SERVER_SOCKS 256
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

/* A peer address prefix (LPM trie key): `prefixlen` counts bits from `family` on, so an IPv4
 * /24 is 32 + 24 and a full IPv6 address 32 + 128. */
struct tb_peer_prefix {
	__u32 prefixlen;
	__u8 family;           /* TB_AF_INET or TB_AF_INET6 */
	__u8 pad[3];
	__u8 ip[16];
};

/* An allocation, identified by the client's 5-tuple as the server sees it (transport UDP). */
struct tb_alloc_key {
	struct tb_ep client;
	struct tb_ep server;
};

struct tb_alloc {
	struct tb_ep relay[2]; /* [1] is the second family of a dual allocation (family 0: none) */
	__u64 id;              /* unique per commit: stale channels of an older allocation never match */
	__u64 expires_ns;      /* bpf_ktime_get_ns() deadline, safety margin already subtracted; 0
				* once it ended here (Refresh 0, given up): the entry stays until
				* keep_until_ns so that a retransmitted Allocate is still known */
	__u64 keep_until_ns;   /* when the server surely holds this allocation no more */
	__u8 txid[12];         /* the Allocate transaction that created it */
	__u8 pad[4];
};

/* The allocation that holds a relayed address (`relays`), and its ID when it was committed. */
struct tb_relay {
	struct tb_alloc_key alloc;
	__u64 alloc_id;
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
 * `cache` holds the last full check (allocation, permission and channel lifetimes) in one word,
 * so that no CPU ever sees half of it: the time it was computed and how long it holds (see
 * state.h). It is valid while no lifetime was shortened since it was computed, neither anywhere
 * (`tb_shortened_ns`) nor in its own allocation's shard (`tb_shortened_shard_ns`), and its deadline
 * is ahead; then the fast path needs no other lookup.
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
	__u64 cache;           /* computed-at (2^20 ns units) << 20 | valid-for (units, < 2^20) */
	__u64 perm_epoch;      /* the permission instance it was bound under (tb_perm.epoch) */
	__u64 packets;         /* datagrams seen by the fast path (drives the spill) */
	__u64 id;              /* this binding's own, unique (from tb_epoch_seq), kept by a refresh:
				* the key of its counters in `binding_counts` */
};

/* A permission: the allocation (by relayed endpoint) and the peer's address (port 0). */
struct tb_perm_key {
	struct tb_ep relay;
	struct tb_ep peer;
};

struct tb_perm {
	__u64 alloc_id;
	__u64 expires_ns;
	/* Which instance of the permission this is (unique, from tb_epoch_seq): it changes when a
	 * permission that had expired is granted again. The server deletes a peer's channels when
	 * its permission expires, so a channel bound under an earlier instance stays dead. */
	__u64 epoch;
};

/* A request seen from a client, waiting for the server's answer. */
struct tb_pending_key {
	struct tb_ep client;
	struct tb_ep server;
	__u8 txid[12];
};

struct tb_pending {
	struct tb_ep peers[TB_MAX_REQ_PEERS];
	__u64 created_ns;      /* when the request was first seen (never moved by a copy) */
	__u32 answered;        /* set atomically by the first answer: later ones change nothing */
	__u16 method;          /* STUN method (0x003 Allocate ...) */
	__u16 chan;            /* ChannelBind: network order */
	__u8 npeers;
	__u8 conflict;         /* the same transaction ID carried different contents: commit nothing */
	__u8 family_sel;       /* Refresh names an address family (REQUESTED-ADDRESS-FAMILY, 0x8032) */
	__u8 peer_overflow;    /* CreatePermission named more peers than `peers` holds */
	__u32 lifetime;        /* the LIFETIME asked for, or TB_NO_LIFETIME: part of what must match */
	__u8 txid[12];         /* the key's, checked again after the value is copied */
	__u8 pad2[4];
};

/* Largest UDP payload the fast path relays; larger datagrams go to the server. */
#define TB_MAX_DATAGRAM 16384

#define TB_NO_LIFETIME 0xFFFFFFFFU

/* Relayed traffic by path, for the metrics: a per-CPU array (`relayed` in maps.h) apart from the
 * counters, one slot per (direction, input family, output family):
 *   slot = direction * 4 + (input is IPv6) * 2 + (output is IPv6)
 * `bytes` counts the relayed data: the UDP payload of the peer's datagram, which is the data of
 * the ChannelData (without its 4-byte header), the same on both sides of the relay. */
#define TB_DIR_TO_PEER 0
#define TB_DIR_TO_CLIENT 1
#define TB_DIR_HAIRPIN 2
#define TB_RELAY_SLOTS 12

struct tb_relay_count {
	__u64 packets;
	__u64 bytes;
};

/* Per-binding counters (--binding-counters): a per-CPU value of `binding_counts` (maps.h) by
 * tb_chan.id, one half per direction, summed over CPUs by the reader (`last_ns`: the latest). */
struct tb_dir_count {
	__u64 packets;
	__u64 bytes;           /* data bytes, as tb_relay_count's */
	__u64 last_ns;         /* bpf_ktime_get_coarse_ns() of the last one (0: none yet) */
};

struct tb_binding_count {
	struct tb_dir_count to_peer;
	struct tb_dir_count to_client;
};

/* Slots of `recent_allocs` (a power of two): the loader reads the allocations committed since its
 * last sweep there, so it must come back before this many more were committed. */
#define TB_RECENT_ALLOCS 16384

/* Shards of the shortened-lifetime stamp (`tb_shortened_shard_ns` in maps.h): an allocation's
 * channels are voided by its own shard, `tb_alloc.id & (TB_SHORTENED_SHARDS - 1)`, so that a commit
 * that shortens one allocation's state voids the caches of about 1/TB_SHORTENED_SHARDS of the
 * channels, not all of them. A power of two. */
#define TB_SHORTENED_SHARDS 4096

/* With --pin-path the programs outlive the agent: they relay only while the agent's last stamp
 * (tb_alive_ns, renewed at every sweep) is at most this old, in ns. */
#define TB_AGENT_STALE_NS 5000000000ULL

/* The layout of what --pin-path keeps: the structs above, the maps in maps.h and the pinned
 * globals. Bump it whenever any of them changes meaning or layout; a pinned state of another
 * version is not adopted (the agent starts clean). A unit test (src/pin.rs) holds a fingerprint
 * of this file and maps.h and fails when they change without a look at this number. */
#define TB_LAYOUT_VERSION 3

/* Counters: per-CPU array indexed by this enum. Codes are stable and never reused. One entry per
 * line with its meaning in a comment: build.rs turns this list into the Rust table (name without
 * the TB_STAT_ prefix, meaning), which the agent prints and the tests look counters up in. */
enum tb_stat {
	TB_STAT_RELAYED_TO_PEER = 0, /* ChannelData relayed client -> peer in XDP (paths chanN_to_udpM) */
	TB_STAT_RELAYED_TO_CLIENT = 1, /* peer datagrams relayed peer -> client in XDP (paths udpN_to_chanM) */
	TB_STAT_PASS_NOT_OURS = 2, /* not TURN traffic: passed */
	TB_STAT_PASS_STUN = 3, /* STUN to a TURN port: passed to the server */
	TB_STAT_PASS_NO_CHANNEL = 4, /* no channel binding: passed */
	TB_STAT_PASS_EXPIRED = 5, /* allocation, permission or channel expired: passed */
	TB_STAT_PASS_FRAGMENT = 6, /* IP fragments: passed */
	TB_STAT_PASS_IP_OPTIONS = 7, /* IP options: passed */
	TB_STAT_PASS_VLAN = 8, /* VLAN-tagged frames: passed */
	TB_STAT_PASS_BAD_LENGTH = 9, /* lengths disagree (incl. GSO batches): passed */
	TB_STAT_PASS_TTL = 10, /* TTL too low: passed */
	TB_STAT_PASS_MTU = 11, /* too large for the egress MTU: passed */
	TB_STAT_PASS_NO_NEIGH = 12, /* no neighbour entry yet: passed */
	TB_STAT_PASS_FWD_DISABLED = 13, /* forwarding disabled on the interface: passed */
	TB_STAT_PASS_FIB_OTHER = 14, /* no usable route: passed */
	TB_STAT_PASS_EGRESS_UNMANAGED = 15, /* next hop on an interface we are not on: passed */
	TB_STAT_PASS_SPILL = 16, /* spilled to the server on purpose */
	TB_STAT_PASS_UNSUPPORTED = 17, /* a path not offloaded (IPv6, cross-family): passed */
	TB_STAT_PENDING_ADDED = 18, /* requests remembered */
	TB_STAT_PENDING_CONFLICT = 19, /* transaction IDs reused with other contents */
	TB_STAT_LEARN_ALLOC = 20, /* allocations learned */
	TB_STAT_LEARN_REFRESH = 21, /* allocation refreshes learned */
	TB_STAT_LEARN_DEALLOC = 22, /* deallocations (Refresh 0) learned */
	TB_STAT_LEARN_PERM = 23, /* permissions learned */
	TB_STAT_LEARN_CHANNEL = 24, /* channel bindings learned */
	TB_STAT_LEARN_ERROR = 25, /* error responses (request discarded) */
	TB_STAT_LEARN_NO_PENDING = 26, /* responses without a matching request */
	TB_STAT_LEARN_NO_ALLOC = 27, /* grants for an allocation we do not know */
	TB_STAT_STATE_FULL = 28, /* maps full: binding left with the server */
	TB_STAT_RELAY_NOT_LOCAL = 29, /* relayed address not local (see --external-ip) */
	TB_STAT_STUN_MALFORMED = 30, /* malformed STUN: nothing recorded */
	TB_STAT_TC_NOT_LOCAL = 31, /* forwarded 'responses' ignored */
	TB_STAT_ABORTED = 32, /* rewrite aborted after it began (never expected) */
	TB_STAT_NOT_MIRRORED = 33, /* grants we cannot mirror: allocation left to the server */
	TB_STAT_TC_FOREIGN = 34, /* 'responses' sent from a socket that is not the server's ignored */
	TB_STAT_RECORD_BLIND = 35, /* STUN request longer than the recorder checks: not recorded, a blind spot (fragments, IP options, VLAN tags and malformed STUN blind the client too, counted as such) */
	TB_STAT_RECORD_BAD_CSUM = 36, /* STUN request with a bad IP or UDP checksum (or a partial one): not recorded, a blind spot */
	TB_STAT_LEARN_STALE = 37, /* answers to a request older than the pending lifetime or than a blind spot of its client: nothing committed */
	TB_STAT_LEARN_DUPLICATE = 38, /* a second answer to an answered request (or a retransmitted Allocate): no change, as at the server */
	TB_STAT_PEER_REFUSED = 39, /* grants for a peer the server's static peer policy refuses (multicast, loopback, zero, denied-peer-ip): not mirrored */
	TB_STAT_PASS_NO_CSUM = 40, /* no UDP checksum where one is needed (IPv6, or IPv4 leaving as IPv6): passed */
	TB_STAT_RECORD_FULL = 41, /* requests not recorded because the pending table is full: a blind spot for their client */
	TB_STAT_PASS_BAD_IP_CSUM = 42, /* an IPv4 header whose checksum fails, that would leave as IPv6: passed (the kernel drops it) */
	TB_STAT_XMIT_DROPPED = 43, /* relayed frames the kernel dropped after we redirected them (xdp_redirect_err, xdp_devmap_xmit drops): relayed, then lost */
	TB_STAT_XMIT_ERROR = 44, /* redirects that failed in the kernel after the program returned (xdp_devmap_xmit / xdp_redirect errors) */
	TB_STAT_PASS_PARTIAL_CSUM = 45, /* UDP checksum left partial for offload (a GSO/GRO batch or a local sender's unfinished checksum): passed */
	TB_STAT_RELAYED_HAIRPIN = 46, /* ChannelData relayed client -> client in XDP, both ends allocations of this server (hairpin) */
	TB_STAT_PASS_TOO_BIG = 47, /* a datagram larger than the server relays whole (its profile's limit): passed */
	TB_STAT_PASS_NO_AGENT = 48, /* no live agent (its stamp is older than TB_AGENT_STALE_NS; see --pin-path): passed */
	TB_STAT_RELAY_TAKEN = 49, /* allocations ended here because a new allocation took their relayed address (the server had closed their socket) */
	TB_STAT__MAX
};

_Static_assert(sizeof(struct tb_ep) == 20, "tb_ep layout");
_Static_assert(sizeof(struct tb_peer_prefix) == 24, "tb_peer_prefix layout");
_Static_assert(sizeof(struct tb_alloc_key) == 40, "tb_alloc_key layout");
_Static_assert(sizeof(struct tb_alloc) == 80, "tb_alloc layout");
_Static_assert(sizeof(struct tb_relay) == 48, "tb_relay layout");
_Static_assert(sizeof(struct tb_chan_key) == 44, "tb_chan_key layout");
_Static_assert(sizeof(struct tb_peer_key) == 40, "tb_peer_key layout");
_Static_assert(sizeof(struct tb_chan) == 136, "tb_chan layout");
_Static_assert(sizeof(struct tb_perm_key) == 40, "tb_perm_key layout");
_Static_assert(sizeof(struct tb_perm) == 24, "tb_perm layout");
_Static_assert(sizeof(struct tb_pending_key) == 52, "tb_pending_key layout");
_Static_assert(sizeof(struct tb_pending) == 120, "tb_pending layout");
_Static_assert(sizeof(struct tb_relay_count) == 16, "tb_relay_count layout");
_Static_assert(sizeof(struct tb_binding_count) == 48, "tb_binding_count layout");

#endif /* TB_SHARED_H */
