// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * turn-bpf: the XDP fast path and the TC egress snooper.
 *
 *   xdp_turn   (XDP, client-facing and relay interfaces), IPv4 and IPv6
 *     UDP to a TURN port:  STUN request   -> remember it (pending) if seen whole, else stamp
 *                                            the client blind; pass
 *                          ChannelData    -> to peer: chanN_to_udpM (relay.h) or pass
 *     UDP to a relay port: from a bound peer -> to client: udpN_to_chanM (relay.h) or pass
 *     anything else: pass
 *   tc_snoop   (TC egress, client-facing interface)
 *     STUN response from a TURN port, sent from one of the server's sockets (server_socks)
 *       -> commit what it grants; never modifies or drops
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* A byte-swapped u16 that keeps its bounds: the 6.1 verifier forgets a value's range across a
 * byte swap (`r1 = be16 r1` leaves an unbounded scalar), so a length read with bpf_ntohs could
 * not be added to a packet pointer. The mask after the swap, where clang cannot drop it, gives
 * the range back (one ALU instruction; later verifiers knew it already). */
#undef bpf_ntohs
#define bpf_ntohs(x)                                                                               \
	({                                                                                         \
		__u32 __v = __bpf_ntohs(x);                                                        \
		asm volatile("%0 &= 0xffff" : "+r"(__v));                                          \
		(__u16)__v;                                                                        \
	})

#include "lib/shared.h"
#include "lib/maps.h"
#include "lib/stun.h"
#include "lib/state.h"
#include "lib/relay.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

static __always_inline bool is_turn_port(__u16 port)
{
#pragma unroll
	for (int i = 0; i < TB_MAX_TURN_PORTS; i++)
		if (cfg_turn_ports[i] && cfg_turn_ports[i] == port)
			return true;
	return false;
}

static __always_inline bool maybe_relay_port(__u16 port)
{
	__u32 idx = bpf_ntohs(port);
	__u32 *set = bpf_map_lookup_elem(&relay_ports, &idx);

	return set && *set;
}

/* The offset of the UDP payload in an option-less IPv4 frame. */
#define UDP4_PAYLOAD_OFF (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

/* A STUN message to a TURN port: remember it if it is a request we will want to commit and we
 * see exactly what the server will process: its UDP checksum verifies and it parses whole.
 * Otherwise the client is stamped blind (state.h). The part both families share: `s` is fresh
 * from scratch_get() with the request's client and server addresses in `s->req_key`; `off` is
 * the UDP payload's offset. Returns 1 when the request was handed to record_request. */
static __always_inline int stun_request(struct xdp_md *ctx, struct tb_scratch *s, __u32 off,
					__u32 payload_len)
{
	struct tb_pending_key *k = &s->req_key;
	struct udphdr udp;

	if (payload_len > TB_MAX_STUN_REQUEST ||
	    bpf_xdp_load_bytes(ctx, off - sizeof(udp), &udp, sizeof(udp))) {
		blind_stamp_key(k, TB_STAT_RECORD_BLIND);
		return 0;
	}
	k->client.port = udp.source;
	k->server.port = udp.dest;
	/* A zero UDP checksum over IPv4 means "none" (over IPv6 the caller passed it by); anything
	 * else must verify, or the kernel drops the datagram (or, for a partial checksum from a
	 * local sender, we cannot tell). */
	if (udp.check) {
		__u64 acc = csum_addr(0, (const __u32 *)k->client.ip, k->client.family, true);

		acc = csum_addr(acc, (const __u32 *)k->server.ip, k->server.family, true);
		acc = csum_add16(acc, bpf_htons(IPPROTO_UDP));
		acc = csum_add16(acc, udp.len);
		acc = csum_add16(acc, udp.source);
		acc = csum_add16(acc, udp.dest);
		acc = csum_add16(acc, udp.len);
		acc = csum_add16(acc, udp.check);
		if (xdp_sum(ctx, off, payload_len, &acc) || csum_fold64(acc) != 0xffff) {
			blind_stamp_key(k, TB_STAT_RECORD_BAD_CSUM);
			return 0;
		}
	}
	if (stun_parse(ctx, true, off, payload_len, &s->msg)) {
		blind_stamp_key(k, TB_STAT_STUN_MALFORMED);
		return 0;
	}
	if (s->msg.cls != STUN_REQUEST)
		return 0;
	record_request(s);
	return 1;
}

/* The IPv4 recorder. A separate subprogram: the control path keeps its stack frame off the fast
 * path's. */
static __noinline int stun_request4(struct xdp_md *ctx, __u32 saddr, __u32 daddr,
				    __u32 payload_len)
{
	struct tb_scratch *s = scratch_get();

	if (!s) {
		blind_stamp4(saddr, daddr, TB_STAT_RECORD_BLIND);
		return 0;
	}
	ep4(&s->req_key.client, saddr, 0);
	ep4(&s->req_key.server, daddr, 0);
	return stun_request(ctx, s, UDP4_PAYLOAD_OFF, payload_len);
}

/* What the request stun_request4/6 just recorded takes away, applied now (state.h). Its own
 * frame: the recorder's is at the stack limit. */
static __noinline void request_takes_away_last(void)
{
	__u32 zero = 0;
	struct tb_scratch *s = bpf_map_lookup_elem(&scratch, &zero);

	if (s && s->req.method)
		request_takes_away(&s->req_key, &s->req);
}

/* Something from `ip6`'s source to its destination went past the recorder unseen. */
static __always_inline void blind_stamp6(const struct ipv6hdr *ip6, __u32 reason)
{
	blind_stamp_slot(blind_slot(ip6->saddr.in6_u.u6_addr32, ip6->daddr.in6_u.u6_addr32),
			 reason);
}

#define UDP6_PAYLOAD_OFF (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr))

/* The IPv6 recorder (no extension headers, UDP checksum non-zero: checked by the caller). */
static __noinline int stun_request6(struct xdp_md *ctx, __u32 payload_len)
{
	struct tb_scratch *s = scratch_get();
	struct tb_ep *c, *sv;

	if (!s)
		return 0; /* cannot happen (a per-CPU array's only slot) */
	c = &s->req_key.client;
	sv = &s->req_key.server;
	c->family = sv->family = TB_AF_INET6;
	if (bpf_xdp_load_bytes(ctx, sizeof(struct ethhdr) + __builtin_offsetof(struct ipv6hdr, saddr), c->ip,
			       16) ||
	    bpf_xdp_load_bytes(ctx, sizeof(struct ethhdr) + __builtin_offsetof(struct ipv6hdr, daddr), sv->ip,
			       16))
		return 0; /* cannot happen: the caller read the header */
	return stun_request(ctx, s, UDP6_PAYLOAD_OFF, payload_len);
}

/* An IPv6 packet: the same as the IPv4 part of xdp_turn. Extension headers (the fragment header
 * among them) are not looked through: passed, and their sender stamped blind. */
static __always_inline int xdp_turn6(struct xdp_md *ctx, struct ipv6hdr *ip6, void *data_end)
{
	struct udphdr *udp = (void *)(ip6 + 1);
	__u8 *payload = (void *)(udp + 1);
	struct pkt in;
	__u16 udp_len;
	bool to_turn;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	switch (ip6->nexthdr) {
	case IPPROTO_UDP:
		break;
	case 44: /* Fragment */
		blind_stamp6(ip6, 0);
		return xdp_pass(TB_STAT_PASS_FRAGMENT);
	case 0:   /* Hop-by-Hop Options */
	case 43:  /* Routing */
	case 60:  /* Destination Options */
	case 50:  /* Encapsulating Security Payload */
	case 51:  /* Authentication Header */
	case 135: /* Mobility */
	case 139: /* Host Identity Protocol */
	case 140: /* Shim6 */
		blind_stamp6(ip6, 0);
		return xdp_pass(TB_STAT_PASS_IP_OPTIONS);
	default:
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	}
	if ((void *)(udp + 1) > data_end)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	to_turn = is_turn_port(udp->dest);
	if (!to_turn && !maybe_relay_port(udp->dest))
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || udp_len != bpf_ntohs(ip6->payload_len) ||
	    (void *)udp + udp_len > data_end) {
		if (to_turn)
			blind_stamp6(ip6, 0);
		return xdp_pass(TB_STAT_PASS_BAD_LENGTH);
	}
	/* IPv6 UDP without a checksum is invalid: the kernel drops it (unless a socket asked for
	 * UDP_NO_CHECK6_RX), we do not touch it, and for a TURN port its client is blind. */
	if (!udp->check) {
		if (to_turn)
			blind_stamp6(ip6, 0);
		return xdp_pass(TB_STAT_PASS_NO_CSUM);
	}
	pkt_from6(&in, ip6, udp, udp_len);
	if (!to_turn)
		return to_client(ctx, &in, ip6, udp);
	if (payload + 1 > (__u8 *)data_end)
		return xdp_pass(TB_STAT_PASS_STUN);
	if ((payload[0] & 0xC0) == 0x40)
		return to_peer(ctx, &in, ip6, udp);
	if ((payload[0] & 0xC0) == 0x00)
		if (stun_request6(ctx, udp_len - sizeof(*udp)))
			request_takes_away_last();
	return xdp_pass(TB_STAT_PASS_STUN);
}

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* A VLAN-tagged frame (one or two tags) carrying IPv4 or IPv6 that may be a request to a TURN
 * port (or a fragment of one): the recorder does not look inside tags, so its client is blind.
 * (The kernel strips a priority tag, or a sub-interface's, and delivers what is inside.) */
static __always_inline void vlan_blind(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct vlan_tag *tag = (void *)(eth + 1);
	__be16 proto;

	if ((void *)(tag + 1) > data_end)
		return;
	proto = tag->proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		tag++;
		if ((void *)(tag + 1) > data_end)
			return;
		proto = tag->proto;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(tag + 1);

		if ((void *)(ip + 1) <= data_end)
			blind_stamp4(ip->saddr, ip->daddr, 0);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(tag + 1);

		if ((void *)(ip6 + 1) <= data_end)
			blind_stamp6(ip6, 0);
	}
}

SEC("xdp")
int xdp_turn(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct pkt in;
	__u16 ip_len, udp_len;
	bool to_turn;

	if ((void *)(eth + 1) > data_end)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD)) {
		vlan_blind(data, data_end);
		return xdp_pass(TB_STAT_PASS_VLAN);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return xdp_turn6(ctx, (void *)(eth + 1), data_end);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return xdp_pass(TB_STAT_PASS_NOT_OURS);

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	if (ip->protocol != IPPROTO_UDP) {
		/* IPsec ends on the host without a device the agent could watch: what it carries
		 * reaches the server unseen. */
		if (ip->protocol == IPPROTO_ESP || ip->protocol == IPPROTO_AH)
			blind_stamp4(ip->saddr, ip->daddr, 0);
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	}
	/* Fragments and options: the recorder cannot see the request whole (a later fragment does
	 * not even name its port), so the sender's requests stop counting. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		blind_stamp4(ip->saddr, ip->daddr, 0);
		return xdp_pass(TB_STAT_PASS_FRAGMENT);
	}
	if (ip->ihl != 5) {
		blind_stamp4(ip->saddr, ip->daddr, 0);
		return xdp_pass(TB_STAT_PASS_IP_OPTIONS);
	}
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);

	to_turn = is_turn_port(udp->dest);
	if (!to_turn && !maybe_relay_port(udp->dest))
		return xdp_pass(TB_STAT_PASS_NOT_OURS);

	/* Ours to look at: the lengths must agree with each other and with the frame. */
	ip_len = bpf_ntohs(ip->tot_len);
	udp_len = bpf_ntohs(udp->len);
	if (ip_len < sizeof(*ip) + sizeof(*udp) || (void *)ip + ip_len > data_end ||
	    udp_len != ip_len - sizeof(*ip)) {
		/* The kernel trims an IP packet longer than its UDP datagram and delivers it: a
		 * request to the server we do not record must leave its client blind. */
		if (to_turn)
			blind_stamp4(ip->saddr, ip->daddr, 0);
		return xdp_pass(TB_STAT_PASS_BAD_LENGTH);
	}

	pkt_from4(&in, ip, udp, udp_len);
	if (!to_turn)
		return to_client(ctx, &in, ip, udp);

	{
		__u8 *payload = (void *)(udp + 1);

		if (payload + 1 > (__u8 *)data_end)
			return xdp_pass(TB_STAT_PASS_STUN);
		if ((payload[0] & 0xC0) == 0x40)
			return to_peer(ctx, &in, ip, udp);
		if ((payload[0] & 0xC0) == 0x00) {
			if (!ip4_csum_ok(ip))
				blind_stamp4(ip->saddr, ip->daddr, TB_STAT_RECORD_BAD_CSUM);
			else if (stun_request4(ctx, ip->saddr, ip->daddr, udp_len - sizeof(*udp)))
				request_takes_away_last();
		}
		return xdp_pass(TB_STAT_PASS_STUN);
	}
}

/* Socket families as bpf_sock reports them. */
#define TB_SK_AF_INET 2
#define TB_SK_AF_INET6 10

/* Was this packet sent from one of the TURN server's own sockets? Their cookies are in
 * server_socks (a packet without a socket has cookie 0, never in it). Another local process,
 * even one bound to the same address and port, has other sockets.
 * With cfg_trust_test_run (test harness only), the dummy socket BPF_PROG_TEST_RUN attaches to its
 * skb counts too: sk_alloc + sock_init_data(NULL, sk) leave its type and protocol 0, and the
 * kernel sets its family from the frame. A socket made by socket(2) always has a type; tun/tap's
 * type-0 sockets have family AF_UNSPEC. */
static __always_inline bool from_server_socket(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct bpf_sock *sk;

	if (cookie && bpf_map_lookup_elem(&server_socks, &cookie))
		return true;
	if (!cfg_trust_test_run)
		return false;
	sk = skb->sk;
	if (!sk)
		return false;
	sk = bpf_sk_fullsock(sk);
	return sk && sk->type == 0 && sk->protocol == 0 &&
	       (sk->family == TB_SK_AF_INET || sk->family == TB_SK_AF_INET6);
}

/* A response leaving from a TURN port: the server's own (sent by this host, from one of its
 * sockets)? Counted when not. */
static __always_inline bool from_the_server(struct __sk_buff *skb)
{
	/* Only the server's own answers count: a forwarded packet is not one, nor one sent from
	 * a socket that is not the server's (a local process posing as the server). */
	if (skb->ingress_ifindex) {
		stat_inc(TB_STAT_TC_NOT_LOCAL);
		return false;
	}
	if (!from_server_socket(skb)) {
		stat_inc(TB_STAT_TC_FOREIGN);
		return false;
	}
	return true;
}

/* Parse the STUN message at `off` (UDP payload of `len` bytes) and commit it for client/server
 * as set in `s->req_key`. ChannelData and Data from the server are not STUN: no parse, nothing
 * to count. */
static __always_inline void snoop_commit(struct __sk_buff *skb, struct tb_scratch *s, __u32 off,
					 __u32 len)
{
	if (stun_parse(skb, false, off, len, &s->msg))
		return;
	commit_response(&s->req_key.client, &s->req_key.server, s);
}

/* The IPv6 half of tc_snoop: no extension headers (the server's sockets send none). */
static __always_inline int tc_snoop6(struct __sk_buff *skb)
{
	struct ipv6hdr ip6;
	struct udphdr udp;
	struct tb_scratch *s;
	__u16 udp_len;

	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)) ||
	    ip6.version != 6 || ip6.nexthdr != IPPROTO_UDP)
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(ip6), &udp, sizeof(udp)))
		return TC_ACT_UNSPEC;
	if (!is_turn_port(udp.source))
		return TC_ACT_UNSPEC;
	udp_len = bpf_ntohs(udp.len);
	if (udp_len < sizeof(udp) + STUN_HDR_LEN || udp_len != bpf_ntohs(ip6.payload_len) ||
	    sizeof(struct ethhdr) + sizeof(ip6) + udp_len > skb->len)
		return TC_ACT_UNSPEC;
	if (!from_the_server(skb))
		return TC_ACT_UNSPEC;
	s = scratch_get();
	if (!s)
		return TC_ACT_UNSPEC;
	__builtin_memcpy(s->req_key.client.ip, &ip6.daddr, 16);
	s->req_key.client.port = udp.dest;
	s->req_key.client.family = TB_AF_INET6;
	__builtin_memcpy(s->req_key.server.ip, &ip6.saddr, 16);
	s->req_key.server.port = udp.source;
	s->req_key.server.family = TB_AF_INET6;
	snoop_commit(skb, s, UDP6_PAYLOAD_OFF, udp_len - sizeof(udp));
	return TC_ACT_UNSPEC;
}

SEC("tc")
int tc_snoop(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct udphdr udp;
	struct tb_scratch *s;
	__u16 ip_len, udp_len;

	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return tc_snoop6(skb);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)))
		return TC_ACT_UNSPEC;
	if (ip.version != 4 || ip.ihl != 5 || ip.protocol != IPPROTO_UDP ||
	    (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(ip), &udp, sizeof(udp)))
		return TC_ACT_UNSPEC;
	if (!is_turn_port(udp.source))
		return TC_ACT_UNSPEC;

	ip_len = bpf_ntohs(ip.tot_len);
	udp_len = bpf_ntohs(udp.len);
	if (udp_len < sizeof(udp) + STUN_HDR_LEN || udp_len != ip_len - sizeof(ip) ||
	    sizeof(struct ethhdr) + ip_len > skb->len)
		return TC_ACT_UNSPEC;
	if (!from_the_server(skb))
		return TC_ACT_UNSPEC;
	s = scratch_get();
	if (!s)
		return TC_ACT_UNSPEC;
	ep4(&s->req_key.client, ip.daddr, udp.dest);
	ep4(&s->req_key.server, ip.saddr, udp.source);
	snoop_commit(skb, s, UDP4_PAYLOAD_OFF, udp_len - sizeof(udp));
	return TC_ACT_UNSPEC;
}

/*
 * Frames the kernel drops after xdp_turn returned: a redirect is a request, and the kernel can
 * still refuse it (a veth whose far end has no NAPI, a full ring). Tracing programs
 * on the XDP tracepoints count them, only for interfaces this agent is attached to
 * (xmit_ifaces, filled by the loader with the same ifindexes as tx_ports, and never emptied
 * while it runs). BTF tracepoints (tp_btf) need no tracefs; they never change anything.
 *   tb_devmap_xmit   xdp:xdp_devmap_xmit, a native redirect batch flushed to its device
 *   tb_redirect_err  xdp:xdp_redirect_err, a redirect that failed before it was queued
 * XMIT_DROPPED counts frames lost, XMIT_ERROR the failures (one per batch for devmap_xmit).
 */

/* Only the field read here; CO-RE finds its offset in the running kernel's BTF. */
struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

/* The ifindexes this agent attached xdp_turn to (ifindex -> 1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TB_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u8);
} xmit_ifaces SEC(".maps");

static __always_inline bool xmit_ours(const struct net_device *dev)
{
	__u32 idx = dev->ifindex;

	return bpf_map_lookup_elem(&xmit_ifaces, &idx) != NULL;
}

static __always_inline void stat_add(__u32 reason, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &reason);

	if (v)
		*v += n;
}

/* ctx: (from_dev, to_dev, sent, drops, err) */
SEC("tp_btf/xdp_devmap_xmit")
int tb_devmap_xmit(__u64 *ctx)
{
	const struct net_device *from = (const void *)ctx[0];
	const struct net_device *to = (const void *)ctx[1];
	int drops = (int)ctx[3], err = (int)ctx[4];

	if (!xmit_ours(from) || !xmit_ours(to))
		return 0;
	if (drops > 0)
		stat_add(TB_STAT_XMIT_DROPPED, drops);
	if (err)
		stat_inc(TB_STAT_XMIT_ERROR);
	return 0;
}

/* ctx: (dev, xdp prog, target, err, map type, map id, index); dev is where the frame came in.
 * The frame is dropped: by the driver in native mode, with its skb in generic mode. A veth
 * whose far end has no NAPI fails here (it does not offer ndo_xdp_xmit then, -EOPNOTSUPP). */
SEC("tp_btf/xdp_redirect_err")
int tb_redirect_err(__u64 *ctx)
{
	const struct net_device *dev = (const void *)ctx[0];

	if (!xmit_ours(dev))
		return 0;
	stat_inc(TB_STAT_XMIT_DROPPED);
	stat_inc(TB_STAT_XMIT_ERROR);
	return 0;
}
