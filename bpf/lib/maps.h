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
/* coturn's --channel-lifetime and --permission-lifetime, in ns. */
volatile const __u64 cfg_channel_lifetime_ns = 600ULL * 1000000000ULL;
volatile const __u64 cfg_permission_lifetime_ns = 300ULL * 1000000000ULL;
/* Subtracted from every deadline: the server's timers run on a 1 s clock, ours must end first. */
volatile const __u64 cfg_margin_ns = 1000000000ULL;
/* Test harness only (the agent never sets it): tc_snoop also trusts the dummy socket that
 * BPF_PROG_TEST_RUN gives its packets (see from_server_socket() in turn.bpf.c). */
volatile const __u32 cfg_trust_test_run = 0;

/* --- global state --- */

/* Bumped by every commit; a channel's cached validity holds only while this is unchanged. */
__u64 tb_state_gen = 1;
/* Source of tb_alloc.id. */
__u64 tb_alloc_seq = 0;

/* --- committed state: written only from the server's own success responses --- */

/* Allocations by client 5-tuple. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_ALLOCS);
	__type(key, struct tb_alloc_key);
	__type(value, struct tb_alloc);
} allocs SEC(".maps");

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

/* Requests waiting for their response. LRU and separate from committed state: a flood of requests
 * only evicts other pending requests. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TB_MAX_PENDING);
	__type(key, struct tb_pending_key);
	__type(value, struct tb_pending);
} pending SEC(".maps");

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

static __always_inline void stat_inc(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &reason);

	if (v)
		*v += 1;
}

static __always_inline __u64 tb_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

#endif /* TB_MAPS_H */
