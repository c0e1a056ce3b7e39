/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The IPv6 and cross-family rewrite paths.
 *
 *   to peer:   chan6_to_udp6, chan4_to_udp6, chan6_to_udp4
 *   to client: udp6_to_chan6, udp6_to_chan4, udp4_to_chan6
 *
 * One generic body per direction, specialised by the output family (a constant): the input is a
 * `struct pkt`, whatever its family. As in chan4.h, everything is checked and computed while the
 * packet is untouched; only then does the head move (by -24..+24 bytes) and the headers get
 * written. New headers:
 *   - IPv6: traffic class from the input's TOS or traffic class, flow label 0, hop limit = input
 *     TTL/hop limit - 1;
 *   - IPv4 from IPv6: IHL 5, TOS from the traffic class, ID 0, DF (as the kernel sends a relay
 *     socket's datagram with path MTU discovery on), TTL = hop limit - 1, a fresh checksum.
 * The UDP checksum is updated incrementally across families (the pseudo-header's addresses are
 * just more 16-bit words); IPv6 requires one, so an IPv4 datagram without one (checksum 0) that
 * would leave as IPv6 goes to the server, and a computed 0 is sent as 0xFFFF.
 */
#ifndef TB_CHAN6_H
#define TB_CHAN6_H

#include <linux/ipv6.h>
#include "chan4.h"

#define IPV6_HDR_LEN 40

static __always_inline void pkt_from6(struct pkt *p, const struct ipv6hdr *ip6,
				      const struct udphdr *udp, __u16 udp_len)
{
	__builtin_memset(p, 0, sizeof(*p));
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6->daddr, 16);
	p->family = TB_AF_INET6;
	p->l3_len = IPV6_HDR_LEN;
	p->ttl = ip6->hop_limit;
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	pkt_udp(p, udp, udp_len);
}

/* Add (`add`) or take out an address of `family` to/from a checksum accumulator. */
static __always_inline __u64 csum_addr(__u64 acc, const __u32 *a, __u8 family, bool add)
{
	__u64 sum = a[0];

	if (family == TB_AF_INET6)
		sum += (__u64)a[1] + a[2] + a[3];
	if (add)
		return acc + sum;
	/* taking the sum out: fold it to 32 bits (end-around carry, twice), add its complement */
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return acc + (__u32)~(__u32)sum;
}

/*
 * The UDP checksum delta of a rewrite from `in` to (src, dst, nudp): the pseudo-header's addresses
 * and length and the UDP header's ports and length. The protocol is UDP on both sides, and the
 * IPv6 pseudo-header's 32-bit length sums the same as the 16-bit one.
 */
static __always_inline __u64 csum_nat_udp(__u64 acc, const struct pkt *in, const struct tb_ep *src,
					  const struct tb_ep *dst, const struct udphdr *nudp)
{
	__u16 old_len = bpf_htons(in->udp_len);

	acc = csum_addr(acc, in->saddr, in->family, false);
	acc = csum_addr(acc, in->daddr, in->family, false);
	acc = csum_addr(acc, (const __u32 *)src->ip, src->family, true);
	acc = csum_addr(acc, (const __u32 *)dst->ip, dst->family, true);
	acc = csum_sub16(acc, in->sport);
	acc = csum_sub16(acc, in->dport);
	acc = csum_add16(acc, nudp->source);
	acc = csum_add16(acc, nudp->dest);
	acc = csum_sub16(acc, old_len);
	acc = csum_sub16(acc, old_len);
	acc = csum_add16(acc, nudp->len);
	return csum_add16(acc, nudp->len);
}

/* The output network header, either family. */
union l3_out {
	struct iphdr v4;
	struct ipv6hdr v6;
};

/* Per-CPU room for what a cross-family or IPv6 rewrite builds: the FIB result and the new
 * network header (off the stack, which the IPv4 path and the recorder share). */
struct tb_out {
	struct bpf_fib_lookup fib;
	union l3_out h;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tb_out);
} out_scratch SEC(".maps");

/* Build the output network header for `in` leaving from `src` to `dst` with `udp_len` bytes of
 * UDP, having crossed `hops` routers (the TTL or hop limit drops by that much). */
static __always_inline void l3_build(union l3_out *h, const struct pkt *in, const struct tb_ep *src,
				     const struct tb_ep *dst, __u16 udp_len, const bool out6,
				     __u8 hops)
{
	__builtin_memset(h, 0, sizeof(*h));
	if (out6) {
		h->v6.version = 6;
		h->v6.priority = in->tos >> 4;
		h->v6.flow_lbl[0] = (in->tos & 0xf) << 4;
		h->v6.payload_len = bpf_htons(udp_len);
		h->v6.nexthdr = IPPROTO_UDP;
		h->v6.hop_limit = in->ttl - hops;
		__builtin_memcpy(&h->v6.saddr, src->ip, 16);
		__builtin_memcpy(&h->v6.daddr, dst->ip, 16);
	} else {
		const __u16 *w = (const __u16 *)&h->v4;
		__u64 acc = 0;

		h->v4.version = 4;
		h->v4.ihl = 5;
		h->v4.tos = in->tos;
		h->v4.tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
		h->v4.frag_off = bpf_htons(0x4000); /* DF */
		h->v4.ttl = in->ttl - hops;
		h->v4.protocol = IPPROTO_UDP;
		h->v4.saddr = ep4_addr(src);
		h->v4.daddr = ep4_addr(dst);
#pragma unroll
		for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
			acc += w[i];
		h->v4.check = csum_finish(acc);
	}
}

/* The next hop for a packet of `tot_len` bytes (network header on) from `src` to `dst`. */
static __always_inline __u32 fib_out(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				     const struct tb_ep *src, const struct tb_ep *dst, __u16 tot_len,
				     __u8 tos, const bool out6)
{
	if (out6)
		return fib6(ctx, fib, (const __u32 *)src->ip, (const __u32 *)dst->ip, src->port,
			    dst->port, tot_len, tos);
	return fib4(ctx, fib, ep4_addr(src), ep4_addr(dst), src->port, dst->port, tot_len, tos);
}

/* Write Ethernet, the network header and UDP at the start of the (already moved) packet; with
 * `chan`, the 4-byte ChannelData header after them. */
static __always_inline int write_out(struct xdp_md *ctx, const struct bpf_fib_lookup *fib,
				     const union l3_out *h, const struct udphdr *nudp,
				     const __u16 *chan, const bool out6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l3 = out6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	struct udphdr *udp = (void *)(eth + 1) + l3;
	__u16 *chh = (void *)(udp + 1);

	if ((void *)(udp + 1) > data_end || (chan && (void *)(chh + 2) > data_end))
		return -1;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	if (out6) {
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(struct ipv6hdr *)(eth + 1) = h->v6;
	} else {
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(struct iphdr *)(eth + 1) = h->v4;
	}
	*udp = *nudp;
	if (chan) {
		chh[0] = chan[0];
		chh[1] = chan[1];
	}
	return 0;
}

/* What both directions check before they build anything: the input's UDP checksum (IPv6 needs
 * one), the next hop from `src` to `dst` for `tot_len` bytes, and the spill. Returns
 * TB_STAT__MAX with `*o` the scratch to build in, or the pass reason. */
static __always_inline __u32 out_begin(struct xdp_md *ctx, const struct pkt *in, struct tb_chan *c,
				       const struct tb_ep *src, const struct tb_ep *dst,
				       __u16 tot_len, const bool out6, struct tb_out **o)
{
	__u32 zero = 0, reason;

	if (!in->check)
		return TB_STAT_PASS_NO_CSUM; /* only an IPv4 input may have none */
	*o = bpf_map_lookup_elem(&out_scratch, &zero);
	if (!*o)
		return TB_STAT_ABORTED; /* cannot happen; nothing written */
	reason = fib_out(ctx, &(*o)->fib, src, dst, tot_len, in->tos, out6);
	if (reason != TB_STAT__MAX)
		return reason;
	if (spill_now(c))
		return TB_STAT_PASS_SPILL;
	return TB_STAT__MAX;
}

/* To peer, for every family pair but IPv4 -> IPv4 (chan4.h). `c` is live and the hop limit
 * allows. */
static __always_inline int chan_to_udp_x(struct xdp_md *ctx, const struct pkt *in,
					 struct udphdr *udp, struct tb_chan *c,
					 const struct chan_in *ch, const bool out6)
{
	void *data_end = (void *)(long)ctx->data_end;
	const __u8 *payload = (const __u8 *)(udp + 1);
	__u32 l3 = out6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u16 new_udp_len = sizeof(struct udphdr) + ch->data_len;
	__u32 reason;
	struct tb_out *o;
	struct udphdr nudp;
	__u64 acc;
	int delta;

	reason = out_begin(ctx, in, c, &c->relay, &c->peer, l3 + new_udp_len, out6, &o);
	if (reason == TB_FIB_LOCAL)
		return TB_HAIRPIN;
	if (reason != TB_STAT__MAX)
		return xdp_pass(reason);

	nudp.source = c->relay.port;
	nudp.dest = c->peer.port;
	nudp.len = bpf_htons(new_udp_len);
	acc = csum_nat_udp(csum_start(in->check), in, &c->relay, &c->peer, &nudp);
	if (csum_sub_channel(&acc, ch, payload, data_end))
		return xdp_pass(TB_STAT_PASS_BAD_LENGTH);
	nudp.check = csum_udp_finish(acc);
	l3_build(&o->h, in, &c->relay, &c->peer, new_udp_len, out6, 1);

	/* --- the packet changes from here on --- */
	delta = (int)(in->l3_len + CHANNEL_HDR_LEN) - (int)l3;
	if (bpf_xdp_adjust_head(ctx, delta))
		return xdp_pass(TB_STAT_ABORTED); /* nothing written yet */
	if (write_out(ctx, &o->fib, &o->h, &nudp, 0, out6) ||
	    trim_to(ctx, sizeof(struct ethhdr) + l3 + new_udp_len))
		return xdp_abort();
	stat_inc(TB_STAT_RELAYED_TO_PEER);
	relay_count(TB_DIR_TO_PEER, in->family == TB_AF_INET6, out6, ch->data_len);
	return fwd_verdict(ctx, &o->fib);
}

/* To client, for every family pair but IPv4 -> IPv4. `c` is live and the hop limit allows. */
static __always_inline int udp_to_chan_x(struct xdp_md *ctx, const struct pkt *in,
					 struct tb_chan *c, const bool out6)
{
	__u32 l3 = out6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u16 data_len = in->udp_len - sizeof(struct udphdr);
	__u16 new_udp_len = sizeof(struct udphdr) + CHANNEL_HDR_LEN + data_len;
	__u32 reason;
	struct tb_out *o;
	struct udphdr nudp;
	__u16 chan_hdr[2];
	__u64 acc;
	int delta;

	reason = out_begin(ctx, in, c, &c->server, &c->client, l3 + new_udp_len, out6, &o);
	if (reason != TB_STAT__MAX)
		return xdp_pass(reason);

	chan_hdr[0] = c->chan;
	chan_hdr[1] = bpf_htons(data_len);
	nudp.source = c->server.port;
	nudp.dest = c->client.port;
	nudp.len = bpf_htons(new_udp_len);
	acc = csum_nat_udp(csum_start(in->check), in, &c->server, &c->client, &nudp);
	acc = csum_add16(acc, chan_hdr[0]);
	acc = csum_add16(acc, chan_hdr[1]);
	nudp.check = csum_udp_finish(acc);
	l3_build(&o->h, in, &c->server, &c->client, new_udp_len, out6, 1);

	/* --- the packet changes from here on --- */
	delta = (int)in->l3_len - (int)(l3 + CHANNEL_HDR_LEN);
	if (bpf_xdp_adjust_head(ctx, delta))
		return xdp_pass(TB_STAT_ABORTED); /* no headroom: nothing written yet */
	if (write_out(ctx, &o->fib, &o->h, &nudp, chan_hdr, out6) ||
	    trim_to(ctx, sizeof(struct ethhdr) + l3 + new_udp_len))
		return xdp_abort();
	stat_inc(TB_STAT_RELAYED_TO_CLIENT);
	relay_count(TB_DIR_TO_CLIENT, in->family == TB_AF_INET6, out6, data_len);
	return fwd_verdict(ctx, &o->fib);
}

/* The units, as subprograms (their frames stay off the IPv4 fast path's): one per output
 * family and direction; the input family is in `in`. */
static __noinline int chan_to_udp6(struct xdp_md *ctx, const struct pkt *in, struct udphdr *udp,
				   struct tb_chan *c, const struct chan_in *ch)
{
	return chan_to_udp_x(ctx, in, udp, c, ch, true);
}

static __noinline int chan_to_udp4(struct xdp_md *ctx, const struct pkt *in, struct udphdr *udp,
				   struct tb_chan *c, const struct chan_in *ch)
{
	return chan_to_udp_x(ctx, in, udp, c, ch, false);
}

static __noinline int udp_to_chan6(struct xdp_md *ctx, const struct pkt *in, struct tb_chan *c)
{
	return udp_to_chan_x(ctx, in, c, true);
}

static __noinline int udp_to_chan4(struct xdp_md *ctx, const struct pkt *in, struct tb_chan *c)
{
	return udp_to_chan_x(ctx, in, c, false);
}

/* The paths by name (chan4_to_udp4 and udp4_to_chan4 are in chan4.h). */
#define chan6_to_udp6 chan_to_udp6
#define chan4_to_udp6 chan_to_udp6
#define chan6_to_udp4 chan_to_udp4
#define udp6_to_chan6 udp_to_chan6
#define udp4_to_chan6 udp_to_chan6
#define udp6_to_chan4 udp_to_chan4

#endif /* TB_CHAN6_H */
