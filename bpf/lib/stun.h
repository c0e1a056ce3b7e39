/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * STUN/TURN message parsing for the control path (RFC 8489, RFC 8656).
 *
 * Both the XDP program (requests) and the TC program (responses) parse through the same code; bytes
 * are copied with bpf_xdp_load_bytes/bpf_skb_load_bytes, so every offset is checked by the kernel
 * against the real packet and variable offsets cost the verifier nothing. Only what the commit
 * needs is kept. Anything odd makes the whole message "malformed", and a malformed message records
 * and commits nothing: the server still answers it, we just do not offload what follows.
 */
#ifndef TB_STUN_H
#define TB_STUN_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "shared.h"

#define STUN_HDR_LEN 20
#define STUN_MAGIC 0x2112A442
#define STUN_MAX_ATTRS 24

_Static_assert((TB_MAX_REQ_PEERS & (TB_MAX_REQ_PEERS - 1)) == 0, "indexing masks with it");

/* Methods */
#define STUN_ALLOCATE 0x003
#define STUN_REFRESH 0x004
#define STUN_CREATE_PERMISSION 0x008
#define STUN_CHANNEL_BIND 0x009

/* Classes (the C1 C0 bits, as 0..3) */
#define STUN_REQUEST 0
#define STUN_INDICATION 1
#define STUN_SUCCESS 2
#define STUN_ERROR 3

/* Attributes */
#define STUN_ATTR_MESSAGE_INTEGRITY 0x0008
#define STUN_ATTR_ERROR_CODE 0x0009
#define STUN_ATTR_CHANNEL_NUMBER 0x000C
#define STUN_ATTR_LIFETIME 0x000D
#define STUN_ATTR_XOR_PEER_ADDRESS 0x0012
#define STUN_ATTR_XOR_RELAYED_ADDRESS 0x0016
#define STUN_ATTR_REQUESTED_ADDRESS_FAMILY 0x0017
#define STUN_ATTR_MESSAGE_INTEGRITY_SHA256 0x001C
#define STUN_ATTR_FINGERPRINT 0x8028
#define STUN_ATTR_MOBILITY_TICKET 0x8030
/* ADDITIONAL-ADDRESS-FAMILY as coturn 4.6.1 numbers it (RFC 8656's 0x8000 is ignored there). */
#define STUN_ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN 0x8032

struct stun_hdr {
	__u16 type;
	__u16 len;
	__u32 cookie;
	__u8 txid[12];
};

struct stun_msg {
	struct tb_ep relay[2];                /* XOR-RELAYED-ADDRESS, in order */
	struct tb_ep peers[TB_MAX_REQ_PEERS]; /* XOR-PEER-ADDRESS, in order */
	__u8 txid[12];
	__u32 lifetime;                       /* LIFETIME, seconds */
	__u16 method;
	__u16 chan;                           /* CHANNEL-NUMBER, network order */
	__u8 cls;
	__u8 nrelay;
	__u8 npeers;
	__u8 peer_overflow;                   /* more peers than we keep */
	__u8 has_lifetime;
	__u8 has_chan;
	__u8 has_family;                      /* REQUESTED-/ADDITIONAL-ADDRESS-FAMILY present */
	__u8 has_mobility;                    /* MOBILITY-TICKET present */
	__u16 error_code;                     /* ERROR-CODE as class * 100 + number */
};

static __always_inline long tb_load(void *ctx, bool xdp, __u32 off, void *to, __u32 len)
{
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

/* Decode an XOR-*-ADDRESS value at `off` with length `alen` into `ep`. 0 on success. */
static __always_inline int stun_xor_addr(void *ctx, bool xdp, __u32 off, __u16 alen,
					 const struct stun_hdr *h, struct tb_ep *ep)
{
	__u8 head[4];
	__u32 w[4];
	__u16 xport;

	if (tb_load(ctx, xdp, off, head, sizeof(head)))
		return -1;
	__builtin_memset(ep, 0, sizeof(*ep));
	/* the port is XORed with the top 16 bits of the magic cookie */
	__builtin_memcpy(&xport, &head[2], sizeof(xport));
	ep->port = xport ^ bpf_htons(STUN_MAGIC >> 16);
	if (head[1] == 0x01) {
		if (alen != 8 || tb_load(ctx, xdp, off + 4, w, 4))
			return -1;
		w[0] ^= bpf_htonl(STUN_MAGIC);
		__builtin_memcpy(ep->ip, w, 4);
		ep->family = TB_AF_INET;
		return 0;
	}
	if (head[1] == 0x02) {
		if (alen != 20 || tb_load(ctx, xdp, off + 4, w, 16))
			return -1;
		/* IPv6: XORed with the cookie followed by the transaction ID */
		w[0] ^= bpf_htonl(STUN_MAGIC);
		w[1] ^= *(const __u32 *)&h->txid[0];
		w[2] ^= *(const __u32 *)&h->txid[4];
		w[3] ^= *(const __u32 *)&h->txid[8];
		__builtin_memcpy(ep->ip, w, 16);
		ep->family = TB_AF_INET6;
		return 0;
	}
	return -1;
}

/*
 * Parse the STUN message of `len` bytes at packet offset `off`.
 * Returns 0 when it is a well-formed STUN message, -1 otherwise (and for non-STUN payloads).
 * A duplicate CHANNEL-NUMBER or LIFETIME is malformed, and so is a message with more attributes
 * than we walk.
 *
 * Attributes after MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT: RFC 8489 servers ignore them, but
 * coturn 4.6.1 acts on every attribute wherever it is (checked: a ChannelBind with a second
 * XOR-PEER-ADDRESS after MESSAGE-INTEGRITY is bound to that second peer). Either way our view and
 * the server's could differ, so an attribute we act on in that position makes the message
 * malformed; any other attribute there is skipped.
 */
static __always_inline int stun_parse(void *ctx, bool xdp, __u32 off, __u32 len,
				      struct stun_msg *m)
{
	struct stun_hdr h;
	__u32 pos, end;
	__u16 type;
	bool sealed = false; /* past MESSAGE-INTEGRITY or FINGERPRINT */

	if (len < STUN_HDR_LEN || tb_load(ctx, xdp, off, &h, sizeof(h)))
		return -1;
	type = bpf_ntohs(h.type);
	if ((type & 0xC000) || h.cookie != bpf_htonl(STUN_MAGIC))
		return -1;
	if (bpf_ntohs(h.len) & 3 || STUN_HDR_LEN + bpf_ntohs(h.len) != len)
		return -1;

	m->cls = ((type >> 4) & 0x1) | ((type >> 7) & 0x2);
	m->method = (type & 0x000F) | ((type & 0x00E0) >> 1) | ((type & 0x3E00) >> 2);
	__builtin_memcpy(m->txid, h.txid, sizeof(m->txid));

	pos = off + STUN_HDR_LEN;
	end = off + len;
	for (int i = 0; i < STUN_MAX_ATTRS; i++) {
		__u16 ah[2], at, al;
		__u32 val;

		if (pos >= end)
			return 0;
		if (pos + 4 > end || tb_load(ctx, xdp, pos, ah, sizeof(ah)))
			return -1;
		at = bpf_ntohs(ah[0]);
		al = bpf_ntohs(ah[1]);
		val = pos + 4;
		if (val + al > end)
			return -1;

		if (sealed && (at == STUN_ATTR_CHANNEL_NUMBER || at == STUN_ATTR_LIFETIME ||
			       at == STUN_ATTR_XOR_PEER_ADDRESS ||
			       at == STUN_ATTR_XOR_RELAYED_ADDRESS ||
			       at == STUN_ATTR_REQUESTED_ADDRESS_FAMILY ||
			       at == STUN_ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN))
			return -1;
		switch (at) {
		case STUN_ATTR_MESSAGE_INTEGRITY:
		case STUN_ATTR_MESSAGE_INTEGRITY_SHA256:
		case STUN_ATTR_FINGERPRINT:
			sealed = true;
			break;
		case STUN_ATTR_ERROR_CODE: {
			__u8 ec[4];

			if (al < 4 || tb_load(ctx, xdp, val, ec, sizeof(ec)))
				return -1;
			m->error_code = (ec[2] & 7) * 100 + ec[3];
			break;
		}
		case STUN_ATTR_MOBILITY_TICKET:
			m->has_mobility = 1;
			break;
		case STUN_ATTR_REQUESTED_ADDRESS_FAMILY:
		case STUN_ATTR_ADDITIONAL_ADDRESS_FAMILY_COTURN:
			/* only its presence matters (see commit_refresh) */
			m->has_family = 1;
			break;
		case STUN_ATTR_CHANNEL_NUMBER: {
			__u16 cn[2];

			if (al != 4 || m->has_chan || tb_load(ctx, xdp, val, cn, sizeof(cn)))
				return -1;
			m->chan = cn[0];
			m->has_chan = 1;
			break;
		}
		case STUN_ATTR_LIFETIME: {
			__u32 lt;

			if (al != 4 || m->has_lifetime || tb_load(ctx, xdp, val, &lt, sizeof(lt)))
				return -1;
			m->lifetime = bpf_ntohl(lt);
			m->has_lifetime = 1;
			break;
		}
		case STUN_ATTR_XOR_PEER_ADDRESS: {
			__u8 n = m->npeers;

			if (n >= TB_MAX_REQ_PEERS) {
				m->peer_overflow = 1;
				break;
			}
			/* keep the checked register for the index: the 6.1 verifier loses a bound
			 * checked on a copy that was spilled, and clang drops the mask */
			barrier_var(n);
			if (stun_xor_addr(ctx, xdp, val, al, &h, &m->peers[n & (TB_MAX_REQ_PEERS - 1)]))
				return -1;
			m->npeers = n + 1;
			break;
		}
		case STUN_ATTR_XOR_RELAYED_ADDRESS: {
			__u8 n = m->nrelay;

			if (n >= 2)
				return -1;
			barrier_var(n); /* as for the peers above */
			if (stun_xor_addr(ctx, xdp, val, al, &h, &m->relay[n & 1]))
				return -1;
			m->nrelay = n + 1;
			break;
		}
		default:
			break;
		}
		pos = val + ((al + 3) & ~3U);
	}
	return pos >= end ? 0 : -1;
}

#endif /* TB_STUN_H */
