/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The IPv4 <-> IPv4 rewrite paths, and what every path shares: the packet view, the ChannelData
 * checks, the checksum helpers and the spill.
 *
 *   chan4_to_udp4 (to peer):   client --ChannelData--> server  =>  relay --UDP--> peer
 *   udp4_to_chan4 (to client): peer --UDP--> relay             =>  server --ChannelData--> client
 *
 * Each path checks everything first (binding, lifetimes, lengths, TTL, next hop, MTU) while the
 * packet is untouched, computes the new headers and the checksum delta from the old fields, and
 * only then moves the head and writes. Whatever fails a check is passed up unmodified.
 */
#ifndef TB_CHAN4_H
#define TB_CHAN4_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "fwd.h"
#include "state.h"

#define CHANNEL_HDR_LEN 4

#define HDRS4_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

/* A to-peer unit's answer when the peer is an address of this host: the caller tries the
 * hairpin (not an XDP verdict). */
#define TB_HAIRPIN (-1)

static __always_inline int xdp_pass(__u32 reason)
{
	stat_inc(reason == TB_FIB_LOCAL ? TB_STAT_PASS_FIB_OTHER : reason);
	return XDP_PASS;
}

/* A rewrite step failed after the packet changed: cannot pass a mangled packet up. */
static __always_inline int xdp_abort(void)
{
	stat_inc(TB_STAT_ABORTED);
	return XDP_ABORTED;
}

static __always_inline void ep4(struct tb_ep *ep, __u32 addr, __u16 port)
{
	__builtin_memcpy(ep->ip, &addr, 4);
	ep->port = port;
	ep->family = TB_AF_INET;
}

static __always_inline __u32 ep4_addr(const struct tb_ep *ep)
{
	__u32 a;

	__builtin_memcpy(&a, ep->ip, 4);
	return a;
}

/*
 * The new IPv4 header: the old one with new addresses and length and the TTL decremented. The
 * header checksum is updated incrementally, not recomputed: a header that arrived with a bad
 * checksum leaves with one too, and its receiver drops it as the kernel here would have.
 */
static __always_inline void ip4_rewrite(struct iphdr *nip, const struct iphdr *old, __u32 src,
					__u32 dst, __u16 tot_len)
{
	__u64 acc = csum_start(old->check);

	*nip = *old;
	nip->tot_len = bpf_htons(tot_len);
	nip->ttl = old->ttl - 1;
	nip->saddr = src;
	nip->daddr = dst;
	acc = csum_sub16(acc, old->tot_len);
	acc = csum_add16(acc, nip->tot_len);
	/* TTL shares its 16-bit word with the protocol */
	acc = csum_sub16(acc, *(const __u16 *)&old->ttl);
	acc = csum_add16(acc, *(const __u16 *)&nip->ttl);
	acc = csum_sub32(acc, old->saddr);
	acc = csum_sub32(acc, old->daddr);
	acc = csum_add32(acc, src);
	acc = csum_add32(acc, dst);
	nip->check = csum_finish(acc);
}

/* The IPv4 header checksum of an option-less header verifies. */
static __always_inline bool ip4_csum_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 acc = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		acc += w[i];
	return csum_fold64(acc) == 0xffff;
}

/* Write eth + IPv4 + UDP headers at the start of the (already resized) packet. */
static __always_inline int write_hdrs4(struct xdp_md *ctx, const struct bpf_fib_lookup *fib,
				       const struct iphdr *nip, const struct udphdr *nudp)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	*ip = *nip;
	*udp = *nudp;
	return 0;
}

/* Cut the frame to `len` bytes (drops ChannelData padding and Ethernet trailer). */
static __always_inline int trim_to(struct xdp_md *ctx, __u32 len)
{
	__u32 have = ctx->data_end - ctx->data;

	if (have > len && bpf_xdp_adjust_tail(ctx, -(int)(have - len)))
		return -1;
	return 0;
}

/*
 * The UDP checksum delta of a NAT rewrite: old addresses and ports out, new ones in, and the
 * length, which is in both the pseudo-header and the UDP header, replaced twice.
 */
static __always_inline __u64 csum_nat_udp4(__u64 acc, const struct iphdr *ip,
					   const struct udphdr *udp, __u32 saddr, __u32 daddr,
					   const struct udphdr *nudp)
{
	acc = csum_sub32(acc, ip->saddr);
	acc = csum_sub32(acc, ip->daddr);
	acc = csum_add32(acc, saddr);
	acc = csum_add32(acc, daddr);
	acc = csum_sub16(acc, udp->source);
	acc = csum_sub16(acc, udp->dest);
	acc = csum_add16(acc, nudp->source);
	acc = csum_add16(acc, nudp->dest);
	acc = csum_sub16(acc, udp->len);
	acc = csum_sub16(acc, udp->len);
	acc = csum_add16(acc, nudp->len);
	return csum_add16(acc, nudp->len);
}

static __always_inline int spill_now(struct tb_chan *c)
{
	__u64 n;

	if (!cfg_spill_every)
		return 0;
	n = __sync_fetch_and_add(&c->packets, 1) + 1;
	return n % cfg_spill_every == 0;
}

/* The network and transport fields of a UDP packet on the fast path, either family. */
struct pkt {
	__u32 saddr[4];        /* network order; IPv4 in [0], the rest zero */
	__u32 daddr[4];
	__u16 sport;           /* network order */
	__u16 dport;
	__u16 udp_len;         /* host order, checked against the packet */
	__u16 check;           /* the UDP checksum as found */
	__u8 family;           /* TB_AF_INET or TB_AF_INET6 */
	__u8 l3_len;           /* 20 or 40 */
	__u8 ttl;              /* TTL or hop limit */
	__u8 tos;              /* TOS or traffic class */
};

static __always_inline void pkt_udp(struct pkt *p, const struct udphdr *udp, __u16 udp_len)
{
	p->sport = udp->source;
	p->dport = udp->dest;
	p->udp_len = udp_len;
	p->check = udp->check;
}

static __always_inline void pkt_from4(struct pkt *p, const struct iphdr *ip,
				      const struct udphdr *udp, __u16 udp_len)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->saddr[0] = ip->saddr;
	p->daddr[0] = ip->daddr;
	p->family = TB_AF_INET;
	p->l3_len = sizeof(struct iphdr);
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	pkt_udp(p, udp, udp_len);
}

/* An endpoint from one side of `p` (`src`: its source, else its destination). */
static __always_inline void ep_of(struct tb_ep *ep, const struct pkt *p, bool src)
{
	__builtin_memcpy(ep->ip, src ? p->saddr : p->daddr, sizeof(ep->ip));
	ep->port = src ? p->sport : p->dport;
	ep->family = p->family;
}

/* The ChannelData header and padding of a to-peer packet, checked against the UDP payload. */
struct chan_in {
	__u16 chan_word;       /* as found (network order) */
	__u16 len_word;
	__u16 data_len;        /* host order */
	__u16 pad;             /* 0-3 bytes after the data */
};

/* 0, or the pass reason. coturn accepts 0-3 bytes of padding over UDP; anything else (a GSO
 * batch in one frame, a truncated message) is the server's to judge. */
static __always_inline __u32 chan_in_parse(struct chan_in *ch, const __u8 *payload,
					   const void *data_end, __u16 payload_len)
{
	if (payload + CHANNEL_HDR_LEN > (const __u8 *)data_end)
		return TB_STAT_PASS_BAD_LENGTH;
	ch->chan_word = *(const __u16 *)payload;
	ch->len_word = *(const __u16 *)(payload + 2);
	ch->data_len = bpf_ntohs(ch->len_word);
	if (ch->data_len == 0 || ch->data_len > TB_MAX_DATAGRAM ||
	    CHANNEL_HDR_LEN + ch->data_len > payload_len)
		return TB_STAT_PASS_BAD_LENGTH;
	ch->pad = payload_len - CHANNEL_HDR_LEN - ch->data_len;
	if (ch->pad > 3)
		return TB_STAT_PASS_BAD_LENGTH;
	return 0;
}

/* Take the ChannelData header and padding out of a UDP checksum accumulator. -1 if a padding
 * byte cannot be read (cannot happen after chan_in_parse). Padding: a byte at an even offset
 * from the data start is the high-order byte of its 16-bit word (the header is 4 bytes, so data
 * keeps its alignment). */
static __always_inline int csum_sub_channel(__u64 *acc, const struct chan_in *ch,
					    const __u8 *payload, const void *data_end)
{
	__u32 data_len = ch->data_len;
	const __u8 *tail;

	/* checked in chan_in_parse, again here for the verifier (the bound does not survive the
	 * stack) */
	if (data_len > TB_MAX_DATAGRAM)
		return -1;
	tail = payload + CHANNEL_HDR_LEN + data_len;

	*acc = csum_sub16(*acc, ch->chan_word);
	*acc = csum_sub16(*acc, ch->len_word);
#pragma unroll
	for (int i = 0; i < 3; i++) {
		const __u8 *b = tail + i;

		if (i >= ch->pad)
			break;
		if (b + 1 > (const __u8 *)data_end)
			return -1;
		if ((data_len + i) & 1)
			*acc = csum_sub16(*acc, bpf_htons(*b));
		else
			*acc = csum_sub16(*acc, bpf_htons((__u16)*b << 8));
	}
	return 0;
}

/* To peer, IPv4 -> IPv4: ChannelData from a client to a peer. `c` is live and the TTL allows. */
static __always_inline int chan4_to_udp4(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp,
					 struct tb_chan *c, const struct chan_in *ch)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *payload = (void *)(udp + 1);
	struct bpf_fib_lookup fib;
	struct iphdr nip;
	struct udphdr nudp;
	__u16 new_udp_len = sizeof(struct udphdr) + ch->data_len;
	__u32 relay = ep4_addr(&c->relay), peer = ep4_addr(&c->peer), reason;

	reason = fib4(ctx, &fib, relay, peer, c->relay.port, c->peer.port,
		      sizeof(struct iphdr) + new_udp_len, ip->tos);
	if (reason == TB_FIB_LOCAL)
		return TB_HAIRPIN;
	if (reason != TB_STAT__MAX)
		return xdp_pass(reason);
	if (spill_now(c))
		return xdp_pass(TB_STAT_PASS_SPILL);

	nudp.source = c->relay.port;
	nudp.dest = c->peer.port;
	nudp.len = bpf_htons(new_udp_len);
	nudp.check = 0;
	if (udp->check) {
		__u64 acc = csum_start(udp->check);

		acc = csum_nat_udp4(acc, ip, udp, relay, peer, &nudp);
		if (csum_sub_channel(&acc, ch, payload, data_end))
			return xdp_pass(TB_STAT_PASS_BAD_LENGTH);
		nudp.check = csum_udp_finish(acc);
	}
	ip4_rewrite(&nip, ip, relay, peer, sizeof(struct iphdr) + new_udp_len);

	/* --- the packet changes from here on --- */
	if (bpf_xdp_adjust_head(ctx, CHANNEL_HDR_LEN))
		return xdp_pass(TB_STAT_ABORTED); /* nothing written yet */
	if (write_hdrs4(ctx, &fib, &nip, &nudp) || trim_to(ctx, HDRS4_LEN + ch->data_len))
		return xdp_abort();
	stat_inc(TB_STAT_RELAYED_TO_PEER);
	relay_count(TB_DIR_TO_PEER, false, false, ch->data_len);
	return fwd_verdict(ctx, &fib);
}

/* To client, IPv4 -> IPv4: a datagram from a peer to a relayed address, to its client as
 * ChannelData. `c` is live and the TTL allows. */
static __always_inline int udp4_to_chan4(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp,
					 __u16 udp_len, struct tb_chan *c)
{
	struct bpf_fib_lookup fib;
	struct iphdr nip;
	struct udphdr nudp;
	__u16 data_len = udp_len - sizeof(*udp), new_udp_len;
	__u16 chan_hdr[2];
	__u32 server, client, reason;

	server = ep4_addr(&c->server);
	client = ep4_addr(&c->client);
	new_udp_len = sizeof(struct udphdr) + CHANNEL_HDR_LEN + data_len;
	reason = fib4(ctx, &fib, server, client, c->server.port, c->client.port,
		      sizeof(struct iphdr) + new_udp_len, ip->tos);
	if (reason != TB_STAT__MAX)
		return xdp_pass(reason);
	if (spill_now(c))
		return xdp_pass(TB_STAT_PASS_SPILL);

	chan_hdr[0] = c->chan;
	chan_hdr[1] = bpf_htons(data_len);
	nudp.source = c->server.port;
	nudp.dest = c->client.port;
	nudp.len = bpf_htons(new_udp_len);
	nudp.check = 0;
	if (udp->check) {
		__u64 acc = csum_start(udp->check);

		acc = csum_nat_udp4(acc, ip, udp, server, client, &nudp);
		acc = csum_add16(acc, chan_hdr[0]);
		acc = csum_add16(acc, chan_hdr[1]);
		nudp.check = csum_udp_finish(acc);
	}
	ip4_rewrite(&nip, ip, server, client, sizeof(struct iphdr) + new_udp_len);

	/* --- the packet changes from here on --- */
	if (bpf_xdp_adjust_head(ctx, -CHANNEL_HDR_LEN))
		return xdp_pass(TB_STAT_ABORTED); /* no headroom: nothing written yet */
	if (write_hdrs4(ctx, &fib, &nip, &nudp))
		return xdp_abort();
	{
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		__u16 *chh = data + HDRS4_LEN;

		if ((void *)(chh + 2) > data_end)
			return xdp_abort();
		chh[0] = chan_hdr[0];
		chh[1] = chan_hdr[1];
	}
	if (trim_to(ctx, HDRS4_LEN + CHANNEL_HDR_LEN + data_len))
		return xdp_abort();
	stat_inc(TB_STAT_RELAYED_TO_CLIENT);
	relay_count(TB_DIR_TO_CLIENT, false, false, data_len);
	return fwd_verdict(ctx, &fib);
}

#endif /* TB_CHAN4_H */
