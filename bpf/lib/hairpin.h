/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The hairpin: ChannelData from one client to a peer that is another allocation's relayed
 * address on this same server (both ends of a call on one TURN server).
 *
 *   chan_to_chan: client A --ChannelData--> server  =>  server --ChannelData--> client B
 *
 * Without it the datagram crosses the server twice: out of A's relayed address into B's, which
 * the kernel delivers locally, then from B's relayed address to B as ChannelData (or a Data
 * indication when B has no channel for A's relayed address). Here both rewrites are chained in
 * one pass, and only when the server would make both: A's binding is live (checked by the
 * caller) and names B's relayed address, the FIB says that address is local, and B holds a live
 * channel for A's relayed address and port (the peer-side entry, exactly what the to-client path
 * requires of a datagram from A's relay). Anything else goes to the server unmodified.
 *
 * The ChannelData header stays in place with B's channel number; the data and its length do not
 * change. The head moves only when the two clients' families differ (+-20 bytes).
 */
#ifndef TB_HAIRPIN_H
#define TB_HAIRPIN_H

#include "chan6.h"

static __always_inline int chan_to_chan_x(struct xdp_md *ctx, const struct pkt *in,
					  struct udphdr *udp, const struct chan_in *ch,
					  struct tb_chan *c2, const bool out6)
{
	void *data_end = (void *)(long)ctx->data_end;
	const __u8 *payload = (const __u8 *)(udp + 1);
	__u32 l3 = out6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u16 new_udp_len = sizeof(struct udphdr) + CHANNEL_HDR_LEN + ch->data_len;
	__u32 reason;
	struct tb_out *o;
	struct udphdr nudp;
	__u16 chan_hdr[2];
	__u64 acc;
	int delta;

	reason = out_begin(ctx, in, c2, &c2->server, &c2->client, l3 + new_udp_len, out6, &o);
	if (reason != TB_STAT__MAX)
		return xdp_pass(reason);

	chan_hdr[0] = c2->chan;
	chan_hdr[1] = ch->len_word;
	nudp.source = c2->server.port;
	nudp.dest = c2->client.port;
	nudp.len = bpf_htons(new_udp_len);
	acc = csum_nat_udp(csum_start(in->check), in, &c2->server, &c2->client, &nudp);
	if (csum_sub_channel(&acc, ch, payload, data_end))
		return xdp_pass(TB_STAT_PASS_BAD_LENGTH);
	acc = csum_add16(acc, chan_hdr[0]);
	acc = csum_add16(acc, chan_hdr[1]);
	nudp.check = csum_udp_finish(acc);
	/* two hops, as at the server: into the other relayed address, and out to its client */
	l3_build(&o->h, in, &c2->server, &c2->client, new_udp_len, out6, 2);

	/* --- the packet changes from here on --- */
	delta = (int)in->l3_len - (int)l3;
	if (delta && bpf_xdp_adjust_head(ctx, delta))
		return xdp_pass(TB_STAT_ABORTED); /* no headroom: nothing written yet */
	if (write_out(ctx, &o->fib, &o->h, &nudp, chan_hdr, out6) ||
	    trim_to(ctx, sizeof(struct ethhdr) + l3 + new_udp_len))
		return xdp_abort();
	stat_inc(TB_STAT_RELAYED_HAIRPIN);
	relay_count(TB_DIR_HAIRPIN, in->family == TB_AF_INET6, out6, ch->data_len);
	return fwd_verdict(ctx, &o->fib);
}

/* The units, as subprograms, one per output family (the input family is in `in`). */
static __noinline int chan_to_chan6(struct xdp_md *ctx, const struct pkt *in, struct udphdr *udp,
				    const struct chan_in *ch, struct tb_chan *c2)
{
	return chan_to_chan_x(ctx, in, udp, ch, c2, true);
}

static __noinline int chan_to_chan4(struct xdp_md *ctx, const struct pkt *in, struct udphdr *udp,
				    const struct chan_in *ch, struct tb_chan *c2)
{
	return chan_to_chan_x(ctx, in, udp, ch, c2, false);
}

/* The hairpin: `c` is the sender's live binding, whose peer the FIB found to be an address of
 * this host; the hop limit allows. `key` is the caller's lookup key, reused (the program's own
 * frame has no room for another). */
static __always_inline int hairpin(struct xdp_md *ctx, const struct pkt *in, struct udphdr *udp,
				   const struct tb_chan *c, const struct chan_in *ch,
				   struct tb_peer_key *key)
{
	struct tb_chan *c2;
	__u64 now;
	int ret;

	key->peer = c->relay;
	key->relay = c->peer;
	c2 = bpf_map_lookup_elem(&peers, key);
	if (!c2)
		return xdp_pass(TB_STAT_PASS_FIB_OTHER); /* a local address, not a relay we know */
	if (c2->client.family != c2->server.family)
		return xdp_pass(TB_STAT_PASS_UNSUPPORTED);
	/* the server relays it out of one relayed address and into the other */
	if (ch->data_len > cfg_max_to_client)
		return xdp_pass(TB_STAT_PASS_TOO_BIG);
	now = tb_now();
	if (!chan_live(c2, now, true))
		return xdp_pass(TB_STAT_PASS_EXPIRED);
	if (in->ttl <= 2)
		return xdp_pass(TB_STAT_PASS_TTL);
	if (c2->client.family == TB_AF_INET6)
		ret = chan_to_chan6(ctx, in, udp, ch, c2);
	else
		ret = chan_to_chan4(ctx, in, udp, ch, c2);
	/* the other binding's to-client half (the caller counts the sender's to-peer half) */
	if (ret == XDP_REDIRECT)
		binding_count(c2->id, TB_DIR_TO_CLIENT, ch->data_len, now);
	return ret;
}

#endif /* TB_HAIRPIN_H */
