// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * The baseline forwarder and the micro-benchmark harness (src/baseline.rs).
 *
 *   xdp_baseline_fwd   the floor any XDP forwarder pays: parse Ethernet/IPv4/UDP or
 *                      Ethernet/IPv6/UDP, bpf_fib_lookup, decrement the TTL (incremental
 *                      checksum) or the hop limit, write the MACs, redirect through a devmap.
 *                      No TURN logic, no state, no counters. Everything else: XDP_PASS.
 *   xdp_bench_restore  restores the original frame, then tail-calls bench_progs[0]. The
 *                      micro-benchmark no longer times through it (src/baseline.rs runs every
 *                      program directly, one run per test run, and reads the kernel's own
 *                      run_time_ns for it); it probes with it whether the kernel accounts a
 *                      tail-called program's time to that program (it does not: the time lands
 *                      on the caller), which is why the harness cannot isolate the program.
 *   xdp_bench_nop      XDP_PASS: the floor of the kernel's per-run accounting (two clock reads).
 *   xdp_lookup_fwd     the floor of a forwarder that looks every packet up in a hash table
 *                      (the scale benchmark, src/scale.rs): the IPv4 forward above with one
 *                      lookup first, of the most compact key a channel can have (16 bytes:
 *                      addresses, ports and the channel number; a 16-byte value: the addresses
 *                      and ports to send from and to), and the rewrite of addresses and ports.
 *                      What it costs at 100,000 entries over 1 is what any per-packet hash
 *                      lookup pays on the machine; the fast path's own growth is measured beside
 *                      it.
 *   xdp_slot_fwd       the same with the key looked up in an open-addressed array instead (key
 *                      and value inline in 32-byte slots, the slot picked by a hash of the key,
 *                      up to BL_SLOT_PROBES slots probed): one memory access where a hash table
 *                      takes two (bucket, then element). What a table of that shape would
 *                      save at 100,000 entries.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* Largest frame the harness restores. */
#define BENCH_MAX_FRAME 512
#define BL_MAX_TX_PORTS 64

/* Interfaces the baseline may redirect to (ifindex -> ifindex), like turn.bpf.c's tx_ports. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BL_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} bl_tx_ports SEC(".maps");

/* The frame the harness restores before every run. */
struct bench_frame {
	__u32 len; /* bytes used in data[] */
	__u32 pad;
	__u8 data[BENCH_MAX_FRAME];
};

/* Slot 0: the frame under test. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} bench_frame SEC(".maps");

/* Slot 0: the program under test (xdp_turn, xdp_baseline_fwd or xdp_bench_nop). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_progs SEC(".maps");

/* RFC 1624 incremental update for a TTL decrement (as the kernel's ip_decrease_ttl). */
static __always_inline void ip_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

/* The IPv4 FIB lookup for a UDP datagram of `ip` sent from src:sport to dst:dport. */
static __always_inline int fib4(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				const struct iphdr *ip, __be32 src, __be32 dst, __be16 sport,
				__be16 dport)
{
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = bpf_ntohs(ip->tot_len);
	fib->tos = ip->tos;
	fib->ifindex = ctx->ingress_ifindex;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* The next hop's MACs, and out through the devmap. */
static __always_inline int send(struct ethhdr *eth, const struct bpf_fib_lookup *fib)
{
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return bpf_redirect_map(&bl_tx_ports, fib->ifindex, 0);
}

/* IPv4: a UDP datagram without options or fragments, TTL > 1. */
static __always_inline int fwd4(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;

	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return XDP_PASS;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end || ip->ttl <= 1)
		return XDP_PASS;

	if (fib4(ctx, &fib, ip, ip->saddr, ip->daddr, udp->source, udp->dest) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;

	ip_decrease_ttl(ip);
	return send(eth, &fib);
}

/* IPv6: UDP right after the fixed header (no extension headers), hop limit > 1. No checksum
 * to fix: the hop limit is not in the UDP pseudo-header and IPv6 has no header checksum. */
static __always_inline int fwd6(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct bpf_fib_lookup fib = {};
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct udphdr *udp;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end || ip6->hop_limit <= 1)
		return XDP_PASS;

	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = udp->source;
	fib.dport = udp->dest;
	fib.tot_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
	fib.ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;

	ip6->hop_limit--;
	return send(eth, &fib);
}

SEC("xdp")
int xdp_baseline_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return fwd4(ctx, eth, data_end);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return fwd6(ctx, eth, data_end);
	return XDP_PASS;
}

SEC("xdp")
int xdp_bench_restore(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_frame *f = bpf_map_lookup_elem(&bench_frame, &zero);
	__u32 len, have;

	if (!f)
		return XDP_ABORTED;
	len = f->len;
	if (len < sizeof(struct ethhdr) || len > BENCH_MAX_FRAME)
		return XDP_ABORTED;
	/* Move the head back to where the original frame began (the programs under test move it by
	 * a few bytes and keep the tail), always calling the helper so every run costs the same. */
	have = bpf_xdp_get_buff_len(ctx);
	if (bpf_xdp_adjust_head(ctx, (int)have - (int)len))
		return XDP_ABORTED;
	if (bpf_xdp_get_buff_len(ctx) != len)
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, f->data, len))
		return XDP_ABORTED;
	bpf_tail_call(ctx, &bench_progs, 0);
	return XDP_ABORTED; /* no program under test */
}

SEC("xdp")
int xdp_bench_nop(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* The lookup floor's table: one entry per flow, sized from user space before load. */
struct bl_flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be16 chan; /* the first two bytes of the UDP payload */
	__u16 pad;
};

struct bl_flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct bl_flow_key);
	__type(value, struct bl_flow);
} bl_flows SEC(".maps");

/* RFC 1624: replace the 32-bit word `from` with `to` in the 16-bit one's complement sum `sum`. */
static __always_inline __u16 csum_replace4(__u16 sum, __be32 from, __be32 to)
{
	__u32 s = (__u16)~sum;

	s += (__u16)~from + (__u16)~(from >> 16);
	s += (__u16)to + (__u16)(to >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	return ~s;
}

/* The IPv4/UDP frame with a 2-byte channel number ahead of the payload, as `key`; 0 if it is
 * not one the floors forward. */
static __always_inline int flow_key(void *data, void *data_end, struct bl_flow_key *key)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	__be16 *chan;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return 0;
	udp = (void *)(ip + 1);
	chan = (void *)(udp + 1);
	if ((void *)(chan + 1) > data_end || ip->ttl <= 1)
		return 0;
	key->saddr = ip->saddr;
	key->daddr = ip->daddr;
	key->sport = udp->source;
	key->dport = udp->dest;
	key->chan = *chan;
	return 1;
}

/* Send the frame flow_key() accepted from `to`'s source to its destination: FIB lookup,
 * addresses and ports rewritten (IPv4 checksum incrementally, no UDP checksum), TTL, MACs,
 * redirect. */
static __always_inline int forward_to(struct xdp_md *ctx, const struct bl_flow *to)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	if (fib4(ctx, &fib, ip, to->saddr, to->daddr, to->sport, to->dport) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;

	ip->check = csum_replace4(ip->check, ip->saddr, to->saddr);
	ip->check = csum_replace4(ip->check, ip->daddr, to->daddr);
	ip->saddr = to->saddr;
	ip->daddr = to->daddr;
	udp->source = to->sport;
	udp->dest = to->dport;
	udp->check = 0; /* none: allowed over IPv4 */
	ip_decrease_ttl(ip);
	return send(eth, &fib);
}

SEC("xdp")
int xdp_lookup_fwd(struct xdp_md *ctx)
{
	struct bl_flow_key key = {};
	struct bl_flow *to;

	if (!flow_key((void *)(long)ctx->data, (void *)(long)ctx->data_end, &key))
		return XDP_PASS;
	to = bpf_map_lookup_elem(&bl_flows, &key);
	if (!to)
		return XDP_PASS;
	return forward_to(ctx, to);
}

/* The open-addressed table of xdp_slot_fwd: a slot is free while its `to.daddr` is 0. Its size
 * (a power of two) is set from user space before load, with `bl_slot_mask` one less. */
#define BL_SLOT_PROBES 16

struct bl_slot {
	struct bl_flow_key key;
	struct bl_flow to;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bl_slot);
} bl_slots SEC(".maps");

volatile const __u32 bl_slot_mask = 0;

/* The slot a key hashes to (src/baseline.rs computes the same): the key's four words, each
 * mixed in with a multiply by the golden ratio, then MurmurHash3's finalizer. */
static __always_inline __u32 slot_hash(const struct bl_flow_key *key)
{
	const __u32 *w = (const __u32 *)key;
	__u32 h = 0;

	h = (h ^ w[0]) * 0x9E3779B1U;
	h = (h ^ w[1]) * 0x9E3779B1U;
	h = (h ^ w[2]) * 0x9E3779B1U;
	h = (h ^ w[3]) * 0x9E3779B1U;
	h ^= h >> 16;
	h *= 0x85EBCA6BU;
	h ^= h >> 13;
	h *= 0xC2B2AE35U;
	return h ^ (h >> 16);
}

SEC("xdp")
int xdp_slot_fwd(struct xdp_md *ctx)
{
	struct bl_flow_key key = {};
	__u32 i, at;

	if (!flow_key((void *)(long)ctx->data, (void *)(long)ctx->data_end, &key))
		return XDP_PASS;
	at = slot_hash(&key);
	for (i = 0; i < BL_SLOT_PROBES; i++) {
		__u32 idx = (at + i) & bl_slot_mask;
		struct bl_slot *s = bpf_map_lookup_elem(&bl_slots, &idx);

		if (!s || !s->to.daddr)
			return XDP_PASS;
		if (s->key.saddr == key.saddr && s->key.daddr == key.daddr &&
		    s->key.sport == key.sport && s->key.dport == key.dport &&
		    s->key.chan == key.chan)
			return forward_to(ctx, &s->to);
	}
	return XDP_PASS;
}
