/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/* Next hop for a rewritten packet: FIB lookup, then the verdict that sends it there. */
#ifndef TB_FWD_H
#define TB_FWD_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/*
 * Resolve the next hop of an IPv4 packet about to leave with these addresses and total length.
 * Returns TB_STAT__MAX when the packet can go, otherwise the pass reason. On success `fib`
 * holds the egress ifindex and both MACs.
 */
static __always_inline __u32 fib4(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u32 src,
				  __u32 dst, __u16 sport, __u16 dport, __u16 tot_len, __u8 tos)
{
	long rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = 17; /* IPPROTO_UDP */
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = tot_len;
	fib->tos = tos;
	fib->ifindex = ctx->ingress_ifindex;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;

	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return TB_STAT_PASS_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return TB_STAT_PASS_FWD_DISABLED;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return TB_STAT_PASS_MTU;
	default:
		return TB_STAT_PASS_FIB_OTHER;
	}
	if (fib->ifindex != ctx->ingress_ifindex && !bpf_map_lookup_elem(&tx_ports, &fib->ifindex))
		return TB_STAT_PASS_EGRESS_UNMANAGED;
	return TB_STAT__MAX;
}

/* The verdict for a rewritten packet whose next hop `fib4` resolved. */
static __always_inline int fwd_verdict(struct xdp_md *ctx, const struct bpf_fib_lookup *fib)
{
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect_map(&tx_ports, fib->ifindex, 0);
}

#endif /* TB_FWD_H */
