/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The mirrored TURN state: recording requests (XDP), committing the server's success responses
 * (TC), and the fast path's check that a binding is still live.
 *
 * Lifetimes follow coturn 4.6.1 (see README "How it works"):
 *   - allocation: the LIFETIME of each Allocate/Refresh success; Refresh 0 removes it;
 *   - channel: --channel-lifetime from each ChannelBind success;
 *   - permission: --permission-lifetime from CreatePermission success; a ChannelBind success sets
 *     the peer's permission to the channel lifetime, and a CreatePermission success for the exact
 *     address of a bound peer refreshes that channel (and its permission) to the channel lifetime.
 * Every deadline has cfg_margin_ns taken off, so the fast path always stops before the server.
 */
#ifndef TB_STATE_H
#define TB_STATE_H

#include "maps.h"
#include "stun.h"

#define NS_PER_SEC 1000000000ULL

/* Per-CPU scratch space for the control path's large structs (the BPF stack is 512 bytes). */
struct tb_scratch {
	struct stun_msg msg;
	struct tb_pending req;
	struct tb_pending_key req_key;
	struct tb_chan chan;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tb_scratch);
} scratch SEC(".maps");

static __always_inline struct tb_scratch *scratch_get(void)
{
	__u32 zero = 0;
	struct tb_scratch *s = bpf_map_lookup_elem(&scratch, &zero);

	if (s)
		__builtin_memset(s, 0, sizeof(*s));
	return s;
}

static __always_inline __u64 deadline(__u64 now, __u64 lifetime_ns)
{
	return lifetime_ns > cfg_margin_ns ? now + lifetime_ns - cfg_margin_ns : now;
}

static __always_inline __u64 min_u64(__u64 a, __u64 b)
{
	return a < b ? a : b;
}

static __always_inline void state_changed(void)
{
	__sync_fetch_and_add(&tb_state_gen, 1);
}

/* ---------------------------------------------------------------------------------------------
 * Fast path: is this binding live? One lookup (the caller's) while the cache holds; on a miss of
 * the cache, the allocation and permission are looked up and the cache refreshed.
 */
/* The validity cache of a binding: the deadline in units of 2^20 ns (about 1 ms, rounded down:
 * the cache ends early, never late) above the low 24 bits of the state generation. */
#define CACHE_GEN_BITS 24
#define CACHE_GEN_MASK ((1ULL << CACHE_GEN_BITS) - 1)
#define CACHE_TIME_SHIFT 20

static __always_inline bool chan_live(struct tb_chan *c, __u64 now)
{
	__u64 gen = *(volatile __u64 *)&tb_state_gen;
	__u64 cache = *(volatile __u64 *)&c->cache;
	struct tb_alloc_key ak = {};
	struct tb_perm_key pk = {};
	struct tb_alloc *a;
	struct tb_perm *p;
	__u64 until;

	if ((cache & CACHE_GEN_MASK) == (gen & CACHE_GEN_MASK) &&
	    (now >> CACHE_TIME_SHIFT) < (cache >> CACHE_GEN_BITS))
		return true;

	ak.client = c->client;
	ak.server = c->server;
	a = bpf_map_lookup_elem(&allocs, &ak);
	if (!a || a->id != c->alloc_id)
		return false;
	pk.relay = c->relay;
	pk.peer = c->peer;
	pk.peer.port = 0;
	p = bpf_map_lookup_elem(&perms, &pk);
	if (!p || p->alloc_id != c->alloc_id)
		return false;
	until = min_u64(min_u64(a->expires_ns, p->expires_ns), c->chan_expires_ns);
	if (now >= until)
		return false;
	/* one store: a CPU refreshing the cache at another generation can overwrite it, but never
	 * leave a deadline stamped with a generation it was not computed at */
	*(volatile __u64 *)&c->cache =
		((until >> CACHE_TIME_SHIFT) << CACHE_GEN_BITS) | (gen & CACHE_GEN_MASK);
	return true;
}

/* ---------------------------------------------------------------------------------------------
 * XDP: remember a request until its response.
 */
static __always_inline bool pending_same(const struct tb_pending *a, const struct tb_pending *b)
{
	const __u32 *x = (const __u32 *)a->peers, *y = (const __u32 *)b->peers;

	if (a->method != b->method || a->chan != b->chan || a->npeers != b->npeers ||
	    a->family_sel != b->family_sel)
		return false;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(a->peers) / 4); i++)
		if (x[i] != y[i])
			return false;
	return true;
}

static __always_inline void record_request(const struct tb_ep *client, const struct tb_ep *server,
					   struct tb_scratch *s)
{
	const struct stun_msg *m = &s->msg;
	struct tb_pending_key *k = &s->req_key;
	struct tb_pending *v = &s->req;
	struct tb_pending *old;

	switch (m->method) {
	case STUN_ALLOCATE:
	case STUN_REFRESH:
		break;
	case STUN_CREATE_PERMISSION:
		if (!m->npeers)
			return;
		break;
	case STUN_CHANNEL_BIND:
		if (!m->has_chan || m->npeers != 1)
			return;
		break;
	default:
		return;
	}

	k->client = *client;
	k->server = *server;
	__builtin_memcpy(k->txid, m->txid, sizeof(k->txid));
	v->method = m->method;
	v->chan = m->chan;
	v->npeers = m->npeers;
	v->family_sel = m->has_family;
	v->peer_overflow = m->peer_overflow;
	__builtin_memcpy(v->peers, m->peers, sizeof(v->peers));
	v->created_ns = tb_now();

	old = bpf_map_lookup_elem(&pending, k);
	if (old) {
		/* A retransmission is fine; a different request under the same ID poisons both. */
		if (!pending_same(old, v)) {
			old->conflict = 1;
			stat_inc(TB_STAT_PENDING_CONFLICT);
		}
		return;
	}
	if (bpf_map_update_elem(&pending, k, v, BPF_NOEXIST) == 0)
		stat_inc(TB_STAT_PENDING_ADDED);
}

/* ---------------------------------------------------------------------------------------------
 * TC: commit what the server granted.
 */

/* The local address packets for relayed address `ep` arrive at, or false if it is not ours. */
static __always_inline bool relay_local(const struct tb_ep *ep, struct tb_ep *out)
{
	struct tb_ep a = {};
	struct tb_ep *mapped;

	__builtin_memcpy(a.ip, ep->ip, sizeof(a.ip));
	a.family = ep->family;
	mapped = bpf_map_lookup_elem(&external_ips, &a);
	if (mapped) {
		__builtin_memcpy(a.ip, mapped->ip, sizeof(a.ip));
		a.family = mapped->family;
	}
	if (!bpf_map_lookup_elem(&local_addrs, &a)) {
		__u64 one = 1;

		bpf_map_update_elem(&not_local, &a, &one, BPF_ANY);
		return false;
	}
	*out = a;
	out->port = ep->port;
	return true;
}

static __always_inline bool ep_same(const struct tb_ep *a, const struct tb_ep *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*a) / 4); i++)
		if (x[i] != y[i])
			return false;
	return true;
}

/* The relayed endpoint of `a` that serves peers of `family`. */
static __always_inline const struct tb_ep *relay_for(const struct tb_alloc *a, __u8 family)
{
	if (a->relay[0].family == family)
		return &a->relay[0];
	if (a->relay[1].family == family)
		return &a->relay[1];
	return 0;
}

/* Forget an allocation: its channels and permissions no longer validate (their alloc_id is
 * gone) and the loader's sweep removes them. Its traffic goes to the server from now on. */
static __always_inline void drop_allocation(const struct tb_alloc_key *ak, __u32 reason)
{
	if (bpf_map_delete_elem(&allocs, ak) == 0)
		stat_inc(reason);
}

static __always_inline void commit_allocate(const struct tb_alloc_key *ak, const struct stun_msg *m,
					    __u64 now)
{
	struct tb_alloc a = {};
	struct tb_alloc *old;

	if (!m->nrelay || !m->has_lifetime) {
		stat_inc(TB_STAT_STUN_MALFORMED);
		return;
	}
	if (m->has_mobility) {
		/* With mobility the server may move the allocation to another 5-tuple by a
		 * Refresh from there; we key allocations by 5-tuple, so leave it to the server. */
		bpf_map_delete_elem(&allocs, ak);
		stat_inc(TB_STAT_NOT_MIRRORED);
		return;
	}
	if (!relay_local(&m->relay[0], &a.relay[0])) {
		stat_inc(TB_STAT_RELAY_NOT_LOCAL);
		return;
	}
	if (m->nrelay > 1 && !relay_local(&m->relay[1], &a.relay[1])) {
		stat_inc(TB_STAT_RELAY_NOT_LOCAL);
		return;
	}
	/* A live allocation granted again with the same relayed address(es) is the same one (the
	 * server answered a retransmitted Allocate): its channels keep their allocation. Anything
	 * else, or an allocation past its deadline here, is a new allocation. */
	old = bpf_map_lookup_elem(&allocs, ak);
	if (old && now < old->expires_ns && ep_same(&old->relay[0], &a.relay[0]) &&
	    ep_same(&old->relay[1], &a.relay[1]))
		a.id = old->id;
	else
		a.id = __sync_fetch_and_add(&tb_alloc_seq, 1) + 1;
	a.expires_ns = deadline(now, (__u64)m->lifetime * NS_PER_SEC);
	if (bpf_map_update_elem(&allocs, ak, &a, BPF_ANY)) {
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u32 port = bpf_ntohs(a.relay[i].port), one = 1;

		if (a.relay[i].family)
			bpf_map_update_elem(&relay_ports, &port, &one, BPF_ANY);
	}
	stat_inc(TB_STAT_LEARN_ALLOC);
}

static __always_inline void commit_refresh(const struct tb_alloc_key *ak, const struct stun_msg *m,
					   const struct tb_pending *p, __u64 now)
{
	struct tb_alloc *a;
	__u64 exp;

	if (!m->has_lifetime) {
		stat_inc(TB_STAT_STUN_MALFORMED);
		return;
	}
	if (m->lifetime == 0) {
		/* Deallocation: the allocation goes now; its channels and permissions no longer
		 * validate (their alloc_id is gone) and the loader's sweep removes them. (With a
		 * family named, coturn removes only that family's relayed address: removing all is
		 * the safe side, the other family's traffic goes to the server.) */
		if (bpf_map_delete_elem(&allocs, ak) == 0)
			stat_inc(TB_STAT_LEARN_DEALLOC);
		else
			stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	a = bpf_map_lookup_elem(&allocs, ak);
	if (!a) {
		stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	exp = deadline(now, (__u64)m->lifetime * NS_PER_SEC);
	if (a->relay[1].family) {
		/* A dual allocation has a deadline per family at the server, one here. coturn
		 * refreshes only the family a REQUESTED-ADDRESS-FAMILY (or its 0x8032) names, and
		 * a Refresh without one only the families still alive (checked with coturn 4.6.1:
		 * after Refresh(IPv6) the IPv4 relayed address ends at its old time, although the
		 * response carries the new LIFETIME). So a family-selective Refresh may shorten
		 * our deadline but never extend it, and once it has passed (one family may be gone
		 * at the server) no Refresh revives the allocation. */
		if (now >= a->expires_ns) {
			stat_inc(TB_STAT_LEARN_NO_ALLOC);
			return;
		}
		if (p->family_sel)
			exp = min_u64(exp, a->expires_ns);
	}
	a->expires_ns = exp;
	stat_inc(TB_STAT_LEARN_REFRESH);
}

static __always_inline int set_perm(const struct tb_ep *relay, const struct tb_ep *peer,
				    __u64 alloc_id, __u64 expires)
{
	struct tb_perm_key pk = {};
	struct tb_perm pv = {};

	pk.relay = *relay;
	pk.peer = *peer;
	pk.peer.port = 0;
	pv.alloc_id = alloc_id;
	pv.expires_ns = expires;
	return bpf_map_update_elem(&perms, &pk, &pv, BPF_ANY);
}

static __always_inline void commit_permissions(const struct tb_alloc_key *ak,
					       const struct tb_pending *p, __u64 now)
{
	struct tb_alloc *a = bpf_map_lookup_elem(&allocs, ak);
	__u64 perm_exp = deadline(now, cfg_permission_lifetime_ns);
	__u64 chan_exp = deadline(now, cfg_channel_lifetime_ns);

	if (!a) {
		stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	if (p->peer_overflow) {
		/* coturn resets the permission of every peer named, which can shorten one that a
		 * ChannelBind had set to the channel lifetime (and its channel goes with it). We
		 * do not know the peers beyond the ones we keep: leave the allocation to it. */
		drop_allocation(ak, TB_STAT_NOT_MIRRORED);
		return;
	}
#pragma unroll
	for (int i = 0; i < TB_MAX_REQ_PEERS; i++) {
		const struct tb_ep *peer = &p->peers[i];
		const struct tb_ep *relay;
		struct tb_peer_key rk = {};
		struct tb_chan *c;
		__u64 exp = perm_exp;

		if (i >= p->npeers)
			break;
		relay = relay_for(a, peer->family);
		if (!relay)
			continue;
		/* coturn: a permission for the exact address of a bound peer refreshes the
		 * channel, and the permission then takes the channel lifetime. Only a channel the
		 * server still has: one still live here whose client-side half still binds this
		 * peer. An expired binding stays in the maps until the sweep, and its channel
		 * number may since have been bound to another peer; reviving it would relay what
		 * the server no longer relays (or deliver this peer's data as the other's). */
		rk.peer = *peer;
		rk.relay = *relay;
		c = bpf_map_lookup_elem(&peers, &rk);
		if (c && c->alloc_id == a->id && now < c->chan_expires_ns) {
			struct tb_chan_key ck = {};
			struct tb_chan *fwd;

			ck.client = c->client;
			ck.server = c->server;
			ck.chan = c->chan;
			fwd = bpf_map_lookup_elem(&chans, &ck);
			if (fwd && fwd->alloc_id == a->id && now < fwd->chan_expires_ns &&
			    ep_same(&fwd->peer, &c->peer)) {
				c->chan_expires_ns = chan_exp;
				fwd->chan_expires_ns = chan_exp;
				exp = chan_exp;
			}
		}
		if (set_perm(relay, peer, a->id, exp)) {
			stat_inc(TB_STAT_STATE_FULL);
			continue;
		}
		stat_inc(TB_STAT_LEARN_PERM);
	}
}

static __always_inline void commit_channel(const struct tb_alloc_key *ak,
					   const struct tb_pending *p, struct tb_chan *cp, __u64 now)
{
	struct tb_alloc *a = bpf_map_lookup_elem(&allocs, ak);
	const struct tb_ep *relay;
	struct tb_chan_key ck = {};
	struct tb_peer_key rk = {};
#define c (*cp)
	__u64 exp = deadline(now, cfg_channel_lifetime_ns);

	if (!a) {
		stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	relay = relay_for(a, p->peers[0].family);
	if (!relay) {
		stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	c.client = ak->client;
	c.server = ak->server;
	c.relay = *relay;
	c.peer = p->peers[0];
	c.chan = p->chan;
	c.alloc_id = a->id;
	c.chan_expires_ns = exp;

	ck.client = ak->client;
	ck.server = ak->server;
	ck.chan = p->chan;
	rk.peer = c.peer;
	rk.relay = c.relay;
	if (bpf_map_update_elem(&chans, &ck, &c, BPF_ANY)) {
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}
	if (bpf_map_update_elem(&peers, &rk, &c, BPF_ANY)) {
		bpf_map_delete_elem(&chans, &ck);
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}
	/* coturn: ChannelBind sets the peer's permission to the channel lifetime. */
	if (set_perm(relay, &c.peer, a->id, exp)) {
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}
	stat_inc(TB_STAT_LEARN_CHANNEL);
#undef c
}

/*
 * A response we cannot match to a request we understood: the pending entry was evicted, the
 * request was one we could not parse, its transaction ID was reused with other contents, or the
 * server answered twice. The server did it anyway, and it is the authority, so its answer may
 * still take state away, never add any:
 *   - Refresh success: its LIFETIME applies if it shortens the allocation (0 removes it);
 *   - any other grant: we do not know what it changed (a CreatePermission may have shortened a
 *     permission, an Allocate replaced the allocation), so the allocation is left to the server.
 */
static __always_inline void commit_unmatched(const struct tb_alloc_key *ak,
					     const struct stun_msg *m, __u64 now)
{
	struct tb_alloc *a;
	__u64 exp;

	if (m->cls != STUN_SUCCESS)
		return;
	switch (m->method) {
	case STUN_REFRESH:
		if (!m->has_lifetime)
			return;
		if (m->lifetime == 0) {
			drop_allocation(ak, TB_STAT_LEARN_DEALLOC);
			return;
		}
		a = bpf_map_lookup_elem(&allocs, ak);
		exp = deadline(now, (__u64)m->lifetime * NS_PER_SEC);
		if (a && exp < a->expires_ns)
			a->expires_ns = exp;
		return;
	case STUN_ALLOCATE:
	case STUN_CREATE_PERMISSION:
	case STUN_CHANNEL_BIND:
		drop_allocation(ak, TB_STAT_NOT_MIRRORED);
		return;
	}
}

/* A response from `server` to `client`: commit it if it answers a request we saw. */
static __always_inline void commit_response(const struct tb_ep *client, const struct tb_ep *server,
					    struct tb_scratch *s)
{
	const struct stun_msg *m = &s->msg;
	struct tb_pending_key k = {};
	struct tb_alloc_key ak = {};
	struct tb_pending *p;
	__u64 now = tb_now();
#define req (s->req)

	if (m->cls != STUN_SUCCESS && m->cls != STUN_ERROR)
		return;
	k.client = *client;
	k.server = *server;
	__builtin_memcpy(k.txid, m->txid, sizeof(k.txid));
	switch (m->method) {
	case STUN_ALLOCATE:
	case STUN_REFRESH:
	case STUN_CREATE_PERMISSION:
	case STUN_CHANNEL_BIND:
		break;
	default:
		return;
	}
	ak.client = *client;
	ak.server = *server;
	/* 437 Allocation Mismatch to a Refresh: the server has no allocation for this 5-tuple. */
	if (m->cls == STUN_ERROR && m->method == STUN_REFRESH && m->error_code == 437) {
		drop_allocation(&ak, TB_STAT_LEARN_DEALLOC);
		state_changed();
	}
	p = bpf_map_lookup_elem(&pending, &k);
	if (p) {
		req = *p;
		bpf_map_delete_elem(&pending, &k);
	}
	if (!p || req.method != m->method || req.conflict) {
		stat_inc(TB_STAT_LEARN_NO_PENDING);
		commit_unmatched(&ak, m, now);
		state_changed();
		return;
	}
	if (m->cls == STUN_ERROR) {
		stat_inc(TB_STAT_LEARN_ERROR);
		return;
	}

	switch (req.method) {
	case STUN_ALLOCATE:
		commit_allocate(&ak, m, now);
		break;
	case STUN_REFRESH:
		commit_refresh(&ak, m, &req, now);
		break;
	case STUN_CREATE_PERMISSION:
		commit_permissions(&ak, &req, now);
		break;
	case STUN_CHANNEL_BIND:
		commit_channel(&ak, &req, &s->chan, now);
		break;
	}
	state_changed();
#undef req
}

#endif /* TB_STATE_H */
