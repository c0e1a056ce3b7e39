/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/* Maps, load-time configuration and counters of turn.bpf.c. */
#ifndef TB_MAPS_H
#define TB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "shared.h"

/* --- configuration: set by the loader before load(), constant afterwards --- */

/* TURN listening ports (network order); 0 marks an unused slot. */
volatile const __u16 cfg_turn_ports[TB_MAX_TURN_PORTS] = {};
/* Pass every Nth datagram of a channel to the server (0: never). */
volatile const __u32 cfg_spill_every = 0;
/* The server's channel and permission lifetimes, in ns. */
volatile const __u64 cfg_channel_lifetime_ns = 600ULL * 1000000000ULL;
volatile const __u64 cfg_permission_lifetime_ns = 300ULL * 1000000000ULL;
/* The server's rules (its profile, src/server_conf/profile.rs). The permission a ChannelBind
 * gives its peer: coturn's is the channel lifetime, pion's and RFC 8656's the permission
 * lifetime. Whether a channel relays only while its permission lives (coturn deletes a peer's
 * channels with its permission; pion relays on a channel whatever the permission). */
volatile const __u64 cfg_bind_permission_ns = 600ULL * 1000000000ULL;
volatile const __u32 cfg_channel_needs_permission = 1;
/* The largest datagram the server relays whole, each way (pion reads into 1600-byte buffers:
 * it drops a larger ChannelData and cuts a larger peer datagram). */
volatile const __u32 cfg_max_to_peer = 16384;
volatile const __u32 cfg_max_to_client = 16384;
/* A Refresh asking for a LIFETIME below this (not 0) is granted this much (coturn: 600 s); 0: as
 * asked. What a recorded Refresh takes away before its answer is seen. */
volatile const __u32 cfg_refresh_floor_s = 0;
/* A Refresh without LIFETIME, or asking for cfg_refresh_max_s or more, is granted this much
 * (pion: 600 s, its default, for both); 0: nothing assumed (the answer's LIFETIME applies). */
volatile const __u32 cfg_refresh_default_s = 0;
volatile const __u32 cfg_refresh_max_s = 0;
/* Subtracted from every deadline: the server's timers run on a 1 s clock, ours must end first. */
volatile const __u64 cfg_margin_ns = 1000000000ULL;
/* A recorded request can be committed only if its answer comes within this time of it, and no
 * blind spot of its client lies within this time of it, before or after. */
volatile const __u64 cfg_pending_lifetime_ns = TB_PENDING_LIFETIME_MS * 1000000ULL;
/* Count packets, data bytes and the last packet's time of each channel binding, each way
 * (`binding_counts`; --binding-counters). Off: the code is dead and the map is one entry. */
volatile const __u32 cfg_binding_counters = 0;
/* Test harness only (the agent never sets it): tc_snoop also trusts the dummy socket that
 * BPF_PROG_TEST_RUN gives its packets (see from_server_socket() in turn.bpf.c). */
volatile const __u32 cfg_trust_test_run = 0;

/* --- global state --- */

/* Kept in a section of its own (libbpf makes it one array map, `.data.pinned`) so that with
 * --pin-path it is pinned beside the maps and a restarted or upgraded agent's programs go on
 * from it: IDs and epochs must never repeat while the maps that hold them live. */
#define TB_PINNED SEC(".data.pinned")

/* The last time (coarse ns) something shortened or removed state it cannot pin to a few
 * allocations (the agent's sweep and restart, a commit that touched several): every channel's
 * cached validity computed at or before it is void. Only ever raised. */
__u64 tb_shortened_ns TB_PINNED = 0;
/* Source of tb_alloc.id. */
__u64 tb_alloc_seq TB_PINNED = 0;
/* Source of tb_perm.epoch. */
__u64 tb_epoch_seq TB_PINNED = 0;
/* When the agent last said it is alive (bpf_ktime_get_ns clock, stamped at every sweep). The
 * fast path relays only while this is at most TB_AGENT_STALE_NS old: with no agent running, a
 * server restart or a deleted snooper would go unnoticed. The snooper keeps learning regardless. */
__u64 tb_alive_ns TB_PINNED = 0;
/* The same per shard of allocations (by tb_alloc.id, see TB_SHORTENED_SHARDS): the last time a
 * commit shortened or removed a lifetime, the allocation or a permission of an allocation of that
 * shard. A channel's cached validity computed at or before its allocation's shard stamp is void.
 * Each only ever raised. */
__u64 tb_shortened_shard_ns[TB_SHORTENED_SHARDS] TB_PINNED = {};

/* --- committed state: written only from the server's own success responses --- */

/* Allocations by client 5-tuple. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_ALLOCS);
	__type(key, struct tb_alloc_key);
	__type(value, struct tb_alloc);
} allocs SEC(".maps");

/* Allocations by relayed address (the local socket address, port included; a dual allocation has
 * an entry per family): how the loader finds the allocation whose relay socket the server closed,
 * from the socket's destroy notice, without walking `allocs`. Written before the allocation is
 * committed (an allocation that cannot be indexed is not committed); a stale entry (its
 * allocation gone, or another one there now) is checked against `allocs` by every reader and
 * removed by the loader's full sweep. Sized twice the allocations by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * TB_MAX_ALLOCS);
	__type(key, struct tb_ep);
	__type(value, struct tb_relay);
} relays SEC(".maps");

/* The allocations committed last, by ID (slot `id & (TB_RECENT_ALLOCS - 1)`), written as the ID is
 * taken, before the commit: the loader checks each new allocation's relayed address against the
 * relay sockets it heard closed in the last seconds (an answer the neighbour queue held back can
 * commit after the server closed its socket). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TB_RECENT_ALLOCS);
	__type(key, __u32);
	__type(value, struct tb_relay);
} recent_allocs SEC(".maps");

/* Channels, client side: (client, server, channel) -> binding. The to-peer lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_CHANNELS);
	__type(key, struct tb_chan_key);
	__type(value, struct tb_chan);
} chans SEC(".maps");

/* Channels, peer side: (peer, relay) -> binding. The to-client lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_CHANNELS);
	__type(key, struct tb_peer_key);
	__type(value, struct tb_chan);
} peers SEC(".maps");

/* Permissions: (relay, peer address) -> deadline. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_PERMS);
	__type(key, struct tb_perm_key);
	__type(value, struct tb_perm);
} perms SEC(".maps");

/* The TURN server's own sockets by socket cookie (value unused): the only senders whose
 * responses tc_snoop trusts. The loader keeps it: the listening sockets of the server process,
 * found from its file descriptors, their cookies from sock_diag. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_SERVER_SOCKS);
	__type(key, __u64);
	__type(value, __u32);
} server_socks SEC(".maps");

/* Requests waiting for their response, and answered ones (a repeated answer must find them). A
 * plain hash, never evicted: what it says is evidence (an answer, a conflicting copy), and losing
 * it would let a later copy look new. When it is full a request is not recorded and its client
 * is blind; the loader removes entries past twice the pending lifetime. Separate from committed
 * state: a flood of requests cannot push committed bindings out. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_PENDING);
	__type(key, struct tb_pending_key);
	__type(value, struct tb_pending);
} pending SEC(".maps");

/* Blind spots: per slot (a hash of the client and server addresses), the last time something from
 * that client to a TURN port went past the recorder unseen (a fragment, IP options, a VLAN tag, a
 * bad checksum, a message it could not parse). A request recorded at or before that time is never
 * committed: the server may have processed another request under its transaction ID. An array,
 * so a flood cannot evict a stamp; a collision only blinds another client too (learning less). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TB_BLIND_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} blind SEC(".maps");

/* Peer addresses the server's static policy refuses (multicast with no-multicast-peers, loopback
 * unless allow-loopback-peers, the zero address, denied-peer-ip ranges), set by the loader. A
 * grant naming one is not mirrored: defence in depth behind the recorder. (The allowed list is
 * not mirrored: it only ever allows more, so leaving it out only offloads less.) */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TB_MAX_PEER_POLICY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tb_peer_prefix);
	__type(value, __u32);
} refused_peers SEC(".maps");

/* Relay ports (host order index) that have had an allocation: a cheap pre-filter that spares
 * unrelated UDP the peers lookup. Set at commit and never cleared while the agent runs (clearing
 * would race new commits): unrelated UDP to a port that once relayed pays one missed lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} relay_ports SEC(".maps");

/* Interfaces we may redirect to (ifindex -> ifindex): the ones this agent attached to. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, TB_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* --external-ip: public relayed address (port 0) -> local address the packets arrive at. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_EXTERNAL_IPS);
	__type(key, struct tb_ep);
	__type(value, struct tb_ep);
} external_ips SEC(".maps");

/* This host's addresses (port 0), kept by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_LOCAL_ADDRS);
	__type(key, struct tb_ep);
	__type(value, __u32);
} local_addrs SEC(".maps");

/* Relayed addresses we could not offload (not local, not mapped), for the loader to log once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, struct tb_ep);
	__type(value, __u64);
} not_local SEC(".maps");

/* Counters, indexed by enum tb_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TB_STAT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Relayed datagrams and their data bytes by path (slots: see tb_relay_count in shared.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TB_RELAY_SLOTS);
	__type(key, __u32);
	__type(value, struct tb_relay_count);
} relayed SEC(".maps");

/* Per-binding counters by tb_chan.id (with cfg_binding_counters): an LRU map sized like the
 * channel tables, so that the ids of deleted bindings, which nothing deletes here, age out. A
 * binding whose entry aged out (or was never made) gets a fresh one on its next datagram. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, TB_MAX_CHANNELS);
	__type(key, __u64);
	__type(value, struct tb_binding_count);
} binding_counts SEC(".maps");

/* What a new binding_counts entry starts from (an update copies it to this CPU's slot and zeroes
 * the others). In .rodata, not on the fast path's tight stack; global, so that the generated
 * `rodata` type covers the whole section. */
const struct tb_binding_count tb_no_count = {};

static __always_inline void stat_inc(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &reason);

	if (v)
		*v += 1;
}

/* One datagram of `bytes` data relayed in `dir` (TB_DIR_*) between these families. */
static __always_inline void relay_count(__u32 dir, bool in6, bool out6, __u32 bytes)
{
	__u32 slot = dir * 4 + (in6 ? 2 : 0) + (out6 ? 1 : 0);
	struct tb_relay_count *v = bpf_map_lookup_elem(&relayed, &slot);

	if (v) {
		v->packets += 1;
		v->bytes += bytes;
	}
}

/* One datagram of `bytes` data relayed in `dir` (TB_DIR_TO_PEER or TB_DIR_TO_CLIENT) through the
 * binding with this id, at `now`. Nothing unless cfg_binding_counters. */
static __always_inline void binding_count(__u64 id, __u32 dir, __u32 bytes, __u64 now)
{
	struct tb_binding_count *v;
	struct tb_dir_count *d;

	if (!cfg_binding_counters)
		return;
	v = bpf_map_lookup_elem(&binding_counts, &id);
	if (!v) {
		bpf_map_update_elem(&binding_counts, &id, &tb_no_count, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&binding_counts, &id);
		if (!v)
			return;
	}
	d = dir == TB_DIR_TO_PEER ? &v->to_peer : &v->to_client;
	d->packets += 1;
	d->bytes += bytes;
	d->last_ns = now;
}

static __always_inline __u64 tb_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Is an agent alive (it stamped tb_alive_ns lately)? One load and one compare per packet. */
static __always_inline bool agent_alive(__u64 now)
{
	return now <= *(volatile __u64 *)&tb_alive_ns + TB_AGENT_STALE_NS;
}

#endif /* TB_MAPS_H */
