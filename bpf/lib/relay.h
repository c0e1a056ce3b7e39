/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The two directions of the fast path: the checks every family pair shares (the binding, its
 * lifetimes, the lengths, the TTL or hop limit), then the unit for the pair, chosen by the
 * input's family and the binding's (chan4.h, chan6.h). Nothing here changes the packet. What a
 * unit relayed (XDP_REDIRECT) is counted for its binding here, once per direction.
 */
#ifndef TB_RELAY_H
#define TB_RELAY_H

#include "chan4.h"
#include "chan6.h"
#include "hairpin.h"

/* The UDP checksum of `in` verifies in full. A subprogram, run only for the rare datagram whose
 * checksum field looks partial; more data than the recorder checks (TB_MAX_STUN_REQUEST) is not
 * summed: false. */
static __noinline int udp_csum_verifies(struct xdp_md *ctx, const struct pkt *in, __u64 acc)
{
	__u32 data_len = in->udp_len - sizeof(struct udphdr);

	/* `acc` holds the pseudo-header already */
	acc = csum_add16(acc, in->sport);
	acc = csum_add16(acc, in->dport);
	acc = csum_add16(acc, bpf_htons(in->udp_len));
	acc = csum_add16(acc, in->check);
	if (data_len &&
	    xdp_sum(ctx, sizeof(struct ethhdr) + in->l3_len + sizeof(struct udphdr), data_len, &acc))
		return 0;
	return csum_fold64(acc) == 0xffff;
}

/*
 * A UDP checksum field that holds only the folded pseudo-header sum: how the kernel leaves a
 * checksum for the device to finish (CHECKSUM_PARTIAL). A local sender's datagram with tx
 * checksum offload (a veth, a container) and every GSO or GRO batch reach a generic-mode or veth
 * program that way. The data is not summed in yet, so an incremental update would send a wrong
 * checksum, and a batch would leave as one datagram: such packets go to the server, whose stack
 * finishes or segments them. A complete checksum equals this value by chance for 1 datagram in
 * 65,535: that one is told apart by summing it whole (a datagram of up to 1,280 bytes of data; a
 * longer one goes to the server).
 */
static __always_inline bool csum_partial(struct xdp_md *ctx, const struct pkt *in)
{
	__u64 acc = csum_addr(0, in->saddr, in->family, true);

	acc = csum_addr(acc, in->daddr, in->family, true);
	acc = csum_add16(acc, bpf_htons(IPPROTO_UDP));
	acc = csum_add16(acc, bpf_htons(in->udp_len));
	if (in->check != csum_fold64(acc))
		return false;
	return !udp_csum_verifies(ctx, in, acc);
}

/* To peer: UDP to a TURN port whose payload starts like ChannelData. `l3` is the IPv4 or IPv6
 * header `in` was read from; `udp` and `in->udp_len` are checked against the packet. */
static __always_inline int to_peer(struct xdp_md *ctx, const struct pkt *in, void *l3,
				   struct udphdr *udp)
{
	void *data_end = (void *)(long)ctx->data_end;
	union {
		struct tb_chan_key chan;
		struct tb_peer_key peer; /* the hairpin's, once `chan` has been used */
	} key = {};
	struct chan_in ch;
	struct tb_chan *c;
	__u32 reason;
	__u64 now;
	int ret;

	reason = chan_in_parse(&ch, (const __u8 *)(udp + 1), data_end,
			       in->udp_len - sizeof(struct udphdr));
	if (reason)
		return xdp_pass(reason);
	ep_of(&key.chan.client, in, true);
	ep_of(&key.chan.server, in, false);
	key.chan.chan = ch.chan_word;
	c = bpf_map_lookup_elem(&chans, &key.chan);
	if (!c)
		return xdp_pass(TB_STAT_PASS_NO_CHANNEL);
	if (c->relay.family != c->peer.family)
		return xdp_pass(TB_STAT_PASS_UNSUPPORTED);
	if (csum_partial(ctx, in))
		return xdp_pass(TB_STAT_PASS_PARTIAL_CSUM);
	if (ch.data_len > cfg_max_to_peer)
		return xdp_pass(TB_STAT_PASS_TOO_BIG);
	now = tb_now();
	if (!agent_alive(now))
		return xdp_pass(TB_STAT_PASS_NO_AGENT);
	if (!chan_live(c, now, false))
		return xdp_pass(TB_STAT_PASS_EXPIRED);
	if (in->ttl <= 1)
		return xdp_pass(TB_STAT_PASS_TTL);
	if (in->family == TB_AF_INET) {
		if (c->peer.family == TB_AF_INET) {
			ret = chan4_to_udp4(ctx, l3, udp, c, &ch);
		} else {
			/* IPv4 -> IPv4 carries a bad header checksum on, as the kernel would drop
			 * it; a new IPv6 header would hide it. */
			if (!ip4_csum_ok(l3))
				return xdp_pass(TB_STAT_PASS_BAD_IP_CSUM);
			ret = chan4_to_udp6(ctx, in, udp, c, &ch);
		}
	} else if (c->peer.family == TB_AF_INET) {
		ret = chan6_to_udp4(ctx, in, udp, c, &ch);
	} else {
		ret = chan6_to_udp6(ctx, in, udp, c, &ch);
	}
	if (ret == TB_HAIRPIN) {
		/* the peer is an address of this host: another allocation's relayed address? */
		if (in->family == TB_AF_INET && !ip4_csum_ok(l3))
			return xdp_pass(TB_STAT_PASS_BAD_IP_CSUM);
		ret = hairpin(ctx, in, udp, c, &ch, &key.peer);
	}
	if (ret == XDP_REDIRECT)
		binding_count(c->id, TB_DIR_TO_PEER, ch.data_len, now);
	return ret;
}

/* To client: UDP to a relay port, from a bound peer. */
static __always_inline int to_client(struct xdp_md *ctx, const struct pkt *in, void *l3,
				     struct udphdr *udp)
{
	struct tb_peer_key key = {};
	struct tb_chan *c;
	__u16 data_len = in->udp_len - sizeof(struct udphdr);
	__u64 now;
	int ret;

	ep_of(&key.peer, in, true);
	ep_of(&key.relay, in, false);
	c = bpf_map_lookup_elem(&peers, &key);
	if (!c)
		return xdp_pass(TB_STAT_PASS_NO_CHANNEL);
	if (c->client.family != c->server.family)
		return xdp_pass(TB_STAT_PASS_UNSUPPORTED);
	if (csum_partial(ctx, in))
		return xdp_pass(TB_STAT_PASS_PARTIAL_CSUM);
	if (data_len == 0 || data_len > TB_MAX_DATAGRAM)
		return xdp_pass(TB_STAT_PASS_BAD_LENGTH);
	if (data_len > cfg_max_to_client)
		return xdp_pass(TB_STAT_PASS_TOO_BIG);
	now = tb_now();
	if (!agent_alive(now))
		return xdp_pass(TB_STAT_PASS_NO_AGENT);
	if (!chan_live(c, now, true))
		return xdp_pass(TB_STAT_PASS_EXPIRED);
	if (in->ttl <= 1)
		return xdp_pass(TB_STAT_PASS_TTL);
	if (in->family == TB_AF_INET) {
		if (c->client.family == TB_AF_INET) {
			ret = udp4_to_chan4(ctx, l3, udp, in->udp_len, c);
		} else {
			if (!ip4_csum_ok(l3))
				return xdp_pass(TB_STAT_PASS_BAD_IP_CSUM);
			ret = udp4_to_chan6(ctx, in, c);
		}
	} else if (c->client.family == TB_AF_INET) {
		ret = udp6_to_chan4(ctx, in, c);
	} else {
		ret = udp6_to_chan6(ctx, in, c);
	}
	if (ret == XDP_REDIRECT)
		binding_count(c->id, TB_DIR_TO_CLIENT, data_len, now);
	return ret;
}

#endif /* TB_RELAY_H */
