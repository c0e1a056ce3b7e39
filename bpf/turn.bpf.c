// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * turn-bpf: the XDP fast path and the TC egress snooper.
 *
 *   xdp_turn   (XDP, client-facing and relay interfaces)
 *     UDP to a TURN port:  STUN request   -> remember it (pending), pass
 *                          ChannelData    -> chan4_to_udp4 (to peer) or pass
 *     UDP to a relay port: from a bound peer -> udp4_to_chan4 (to client) or pass
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

#include "lib/shared.h"
#include "lib/maps.h"
#include "lib/stun.h"
#include "lib/state.h"
#include "lib/chan4.h"

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

/* A STUN message to a TURN port: remember it if it is a request we will want to commit.
 * A separate subprogram: the control path keeps its stack frame off the fast path's. */
static __noinline void stun_request4(struct xdp_md *ctx, __u32 saddr, __u32 daddr, __u32 ports,
				     __u32 payload_len)
{
	__u16 sport = ports & 0xffff, dport = ports >> 16;
	struct tb_scratch *s = scratch_get();
	struct tb_ep client = {}, server = {};

	if (!s)
		return;
	if (stun_parse(ctx, true, UDP4_PAYLOAD_OFF, payload_len, &s->msg)) {
		stat_inc(TB_STAT_STUN_MALFORMED);
		return;
	}
	if (s->msg.cls != STUN_REQUEST)
		return;
	ep4(&client, saddr, sport);
	ep4(&server, daddr, dport);
	record_request(&client, &server, s);
}

SEC("xdp")
int xdp_turn(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	__u16 ip_len, udp_len;
	bool to_turn;

	if ((void *)(eth + 1) > data_end)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return xdp_pass(TB_STAT_PASS_VLAN);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct udphdr *u6 = (void *)(ip6 + 1);

		if ((void *)(u6 + 1) <= data_end && ip6->nexthdr == IPPROTO_UDP &&
		    (is_turn_port(u6->dest) || maybe_relay_port(u6->dest)))
			return xdp_pass(TB_STAT_PASS_UNSUPPORTED);
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return xdp_pass(TB_STAT_PASS_NOT_OURS);

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->protocol != IPPROTO_UDP)
		return xdp_pass(TB_STAT_PASS_NOT_OURS);
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return xdp_pass(TB_STAT_PASS_FRAGMENT);
	if (ip->ihl != 5)
		return xdp_pass(TB_STAT_PASS_IP_OPTIONS);
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
	    udp_len != ip_len - sizeof(*ip))
		return xdp_pass(TB_STAT_PASS_BAD_LENGTH);

	if (!to_turn)
		return udp4_to_chan4(ctx, ip, udp, udp_len);

	{
		__u8 *payload = (void *)(udp + 1);

		if (payload + 1 > (__u8 *)data_end)
			return xdp_pass(TB_STAT_PASS_STUN);
		if ((payload[0] & 0xC0) == 0x40)
			return chan4_to_udp4(ctx, ip, udp, udp_len);
		if ((payload[0] & 0xC0) == 0x00)
			stun_request4(ctx, ip->saddr, ip->daddr,
				      udp->source | ((__u32)udp->dest << 16), udp_len - sizeof(*udp));
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

SEC("tc")
int tc_snoop(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct udphdr udp;
	struct tb_ep client = {}, server = {};
	struct tb_scratch *s;
	__u16 ip_len, udp_len;

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
	/* Only the server's own answers count: a forwarded packet is not one, nor one sent from
	 * a socket that is not the server's (a local process posing as the server). */
	if (skb->ingress_ifindex) {
		stat_inc(TB_STAT_TC_NOT_LOCAL);
		return TC_ACT_UNSPEC;
	}
	if (!from_server_socket(skb)) {
		stat_inc(TB_STAT_TC_FOREIGN);
		return TC_ACT_UNSPEC;
	}
	s = scratch_get();
	/* ChannelData and Data from the server are not STUN: no parse, nothing to count. */
	if (!s || stun_parse(skb, false, UDP4_PAYLOAD_OFF, udp_len - sizeof(udp), &s->msg))
		return TC_ACT_UNSPEC;
	ep4(&client, ip.daddr, udp.dest);
	ep4(&server, ip.saddr, udp.source);
	commit_response(&client, &server, s);
	return TC_ACT_UNSPEC;
}
