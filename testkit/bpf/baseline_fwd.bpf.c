// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * The baseline forwarder and the micro-benchmark harness (src/baseline.rs).
 *
 *   xdp_baseline_fwd   the floor any XDP forwarder pays: parse Ethernet/IPv4/UDP, bpf_fib_lookup,
 *                      decrement the TTL (incremental checksum), write the MACs, redirect through
 *                      a devmap. No TURN logic, no state, no counters. Everything else: XDP_PASS.
 *   xdp_bench_restore  measurement harness: restores the original frame, then tail-calls
 *                      bench_progs[0] (the program under test).
 *   xdp_bench_nop      XDP_PASS: the harness's own cost, subtracted from every measurement.
 *
 * Why a harness: BPF_PROG_TEST_RUN with `repeat` runs the program again and again on the SAME
 * buffer (not live-frames mode). A program that rewrites the packet (chan4_to_udp4 moves the head and
 * rewrites every header) sees its own output from the second run on, and the average then
 * measures whatever path that output takes (for chan4_to_udp4: "not ours, pass"). The harness puts the
 * original bytes back before each run, so every run takes the path under test; running the same
 * harness in front of xdp_bench_nop measures the restore and the tail call, which are subtracted.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#ifndef AF_INET
#define AF_INET 2
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

SEC("xdp")
int xdp_baseline_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip;
	struct udphdr *udp;
	long rc;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return XDP_PASS;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end || ip->ttl <= 1)
		return XDP_PASS;

	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = udp->source;
	fib.dport = udp->dest;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.tos = ip->tos;
	fib.ifindex = ctx->ingress_ifindex;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;

	ip_decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect_map(&bl_tx_ports, fib.ifindex, 0);
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
