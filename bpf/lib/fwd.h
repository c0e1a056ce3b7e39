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
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* fib_verdict's answer for a destination that is an address of this host. A packet to a peer
 * there may be a hairpin (hairpin.h); anywhere else it is passed as TB_STAT_PASS_FIB_OTHER. */
#define TB_FIB_LOCAL (TB_STAT__MAX + 1)

/* The pass reason for a bpf_fib_lookup result, TB_FIB_LOCAL, or TB_STAT__MAX when the packet can
 * go (and then only through an interface we are attached to, the one it came in on included). */
static __always_inline __u32 fib_verdict(struct xdp_md *ctx, struct bpf_fib_lookup *fib, long rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return TB_STAT_PASS_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return TB_STAT_PASS_FWD_DISABLED;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return TB_STAT_PASS_MTU;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return TB_FIB_LOCAL;
	default:
		return TB_STAT_PASS_FIB_OTHER;
	}
	if (!bpf_map_lookup_elem(&tx_ports, &fib->ifindex))
		return TB_STAT_PASS_EGRESS_UNMANAGED;
	return TB_STAT__MAX;
}

/*
 * Resolve the next hop of an IPv4 packet about to leave with these addresses and total length.
 * Returns TB_STAT__MAX when the packet can go, otherwise the pass reason. On success `fib`
 * holds the egress ifindex and both MACs.
 */
static __always_inline __u32 fib4(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u32 src,
				  __u32 dst, __u16 sport, __u16 dport, __u16 tot_len, __u8 tos)
{
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
	return fib_verdict(ctx, fib, bpf_fib_lookup(ctx, fib, sizeof(*fib), 0));
}

/* The same for an IPv6 packet; `tot_len` is the whole packet from the IPv6 header on, so the
 * MTU check counts the header too. The flow label is left out (we send 0). */
static __always_inline __u32 fib6(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				  const __u32 *src, const __u32 *dst, __u16 sport, __u16 dport,
				  __u16 tot_len, __u8 tclass)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET6;
	fib->l4_protocol = 17; /* IPPROTO_UDP */
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = tot_len;
	fib->flowinfo = bpf_htonl((__u32)tclass << 20);
	fib->ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(fib->ipv6_src, src, 16);
	__builtin_memcpy(fib->ipv6_dst, dst, 16);
	return fib_verdict(ctx, fib, bpf_fib_lookup(ctx, fib, sizeof(*fib), 0));
}

/*
 * The verdict for a rewritten packet whose next hop `fib4`/`fib6` resolved: a redirect through
 * the devmap, also when the packet leaves where it came in. XDP_TX would do for that on a NIC,
 * but into a veth it needs an XDP program on the far end (without one the frames wait in the
 * ring until something else wakes it), while a redirect needs only NAPI there (GRO or an XDP
 * program), which the agent checks. bpf_redirect_map with flags 0 answers XDP_REDIRECT or
 * XDP_ABORTED; saying so keeps the verdict a known value for the verifier (the to-peer units'
 * callers tell verdicts from TB_HAIRPIN).
 */
static __always_inline int fwd_verdict(struct xdp_md *ctx, const struct bpf_fib_lookup *fib)
{
	return bpf_redirect_map(&tx_ports, fib->ifindex, 0) == XDP_REDIRECT ? XDP_REDIRECT
									     : XDP_ABORTED;
}

#endif /* TB_FWD_H */
