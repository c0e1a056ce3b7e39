/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * The mirrored TURN state: recording requests (XDP), committing the server's success responses
 * (TC), and the fast path's check that a binding is still live.
 *
 * What may be committed: a success response the server sent, to a request recorded here whose
 * exact bytes the server received. A request is recorded only when both checksums verify and the
 * whole message parsed; anything to a TURN port the recorder cannot fully see stamps a blind time
 * for that client (`blind`), and a request recorded at or before its client's last blind time, or
 * answered later than cfg_pending_lifetime_ns after it was seen, commits nothing: under its
 * transaction ID the server may have processed a request we never saw. The first answer commits;
 * any later one changes nothing (the server repeats an Allocate's answer without changing it, and
 * repeats the others with the same effect, a little later than ours).
 *
 * Lifetimes follow coturn 4.6.1 (see README "How it works"):
 *   - allocation: the LIFETIME of each Allocate/Refresh success (a retransmitted Allocate changes
 *     nothing); Refresh 0 removes it;
 *   - channel: --channel-lifetime from each ChannelBind success, which also sets the peer's
 *     permission to the channel lifetime;
 *   - permission: --permission-lifetime from each CreatePermission success, replacing whatever the
 *     peer had (so it can shorten one a ChannelBind set); it never touches a channel, but when a
 *     permission expires the server deletes that peer's channels, so a channel lives only as long
 *     as the permission instance it was bound under (tb_perm.epoch).
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

/* Per-CPU room for one STUN request's bytes, to verify its UDP checksum. */
struct tb_csum_buf {
	__u8 b[TB_MAX_STUN_REQUEST + 4]; /* + room to zero-pad the last word */
};

_Static_assert(TB_MAX_STUN_REQUEST % 256 == 0, "summed in 256-byte chunks");
_Static_assert((TB_BLIND_SLOTS & (TB_BLIND_SLOTS - 1)) == 0, "slots are picked with a mask");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tb_csum_buf);
} csum_buf SEC(".maps");

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

/* Raise the stamp at `stamp` to now, right after a map write that shortened or removed a
 * lifetime, an allocation or a permission: every cached check the stamp covers, computed up to
 * now, is void. The clock is read here, after the write, so a reader that saw the old value
 * computed its cache at or before it. A stamp only ever grows (compare-and-swap: two CPUs
 * committing at once must not move it back); if the swap keeps failing, caching under this stamp
 * is given up for good rather than risked. */
static __always_inline void stamp_raise(__u64 *stamp)
{
	__u64 now, old;

	/* A full barrier (a locked add of 0) between the map write and the clock: without it the
	 * write may still sit in this CPU's store buffer while the clock is read, and a reader in
	 * the next clock unit could compute a cache from the old value that this stamp does not
	 * void. */
	__sync_fetch_and_add(stamp, 0);
	now = tb_now();
	old = *(volatile __u64 *)stamp;

	for (int i = 0; i < 64; i++) {
		__u64 prev;

		if (old >= now)
			return;
		prev = __sync_val_compare_and_swap(stamp, old, now);
		if (prev == old)
			return;
		old = prev;
	}
	__sync_lock_test_and_set(stamp, ~0ULL);
}

_Static_assert((TB_SHORTENED_SHARDS & (TB_SHORTENED_SHARDS - 1)) == 0,
	       "shards are picked with a mask");

/* The shard stamp of the allocation with this id (see TB_SHORTENED_SHARDS). */
static __always_inline __u64 *shortened_shard(__u64 alloc_id)
{
	return &tb_shortened_shard_ns[alloc_id & (TB_SHORTENED_SHARDS - 1)];
}

/* A commit has just shortened or removed something the channels of the allocation `alloc_id`
 * (tb_chan.alloc_id) validate against (call this after the map write): their cached checks
 * computed up to now are void, and no other allocation's (but those sharing its shard). */
static __always_inline void alloc_shortened(__u64 alloc_id)
{
	stamp_raise(shortened_shard(alloc_id));
}

/* The same for every channel of every allocation: for a commit that cannot name the allocations
 * it shortened. */
static __always_inline void state_shortened(void)
{
	stamp_raise(&tb_shortened_ns);
}

/* Two endpoints are the same (every byte: endpoints are built zeroed, padding included). */
static __always_inline bool ep_eq(const struct tb_ep *a, const struct tb_ep *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

_Static_assert(__builtin_offsetof(struct tb_chan_key, client) ==
		       __builtin_offsetof(struct tb_alloc_key, client) &&
		       __builtin_offsetof(struct tb_chan_key, server) ==
		       __builtin_offsetof(struct tb_alloc_key, server),
	       "a channel key starts with its allocation's key");

/* ---------------------------------------------------------------------------------------------
 * Fast path: is this binding live? One lookup (the caller's) while the cache holds; on a miss of
 * the cache, the allocation and permission are looked up and the cache refreshed.
 *
 * The cache is one word: the time it was computed (in units of 2^20 ns, about 1 ms, rounded down)
 * above how many units it stays valid (at most 2^20 - 1, about 18 minutes, rounded down: it ends
 * early, never late). It holds while its computation time is after the last shortening, in whole
 * units (a shortening in the same unit voids it), both the last one anywhere (tb_shortened_ns)
 * and the last one in its allocation's shard (tb_shortened_shard_ns), and its deadline is ahead.
 * Times are full monotonic clock values: nothing wraps, and no CPU ever sees half of a cache.
 *
 * A cache vouches only for a channel whose allocation and permission carry its own alloc_id (the
 * check below refuses anything else), so a commit that shortens state of allocation X voids
 * every cache that state vouched for by raising X's shard. The shard is that of c->alloc_id,
 * which nothing changes in place (every commit writes a whole new entry).
 */
#define CACHE_UNIT_SHIFT 20
#define CACHE_SPAN_BITS 20
#define CACHE_SPAN_MAX ((1ULL << CACHE_SPAN_BITS) - 1)

/* `peer_side`: `c` is a `peers` entry (the to-client lookup); the refresh also confirms that the
 * client's channel number still names this peer (a channel number re-pointed to another peer
 * removes the old peer's entry when it commits; this catches any entry that outlived that). */
static __always_inline bool chan_live(struct tb_chan *c, __u64 now, const bool peer_side)
{
	__u64 shortened = *(volatile __u64 *)&tb_shortened_ns;
	__u64 in_shard = *(volatile __u64 *)shortened_shard(c->alloc_id);
	__u64 cache = *(volatile __u64 *)&c->cache;
	__u64 at = cache >> CACHE_SPAN_BITS, now_u = now >> CACHE_UNIT_SHIFT;
	/* the channel key, whose start is the allocation key (one key: the stack is tight) */
	struct tb_chan_key ck = {};
	struct tb_perm_key pk = {};
	struct tb_alloc *a;
	struct tb_perm *p;
	__u64 until, span;

	if (in_shard > shortened)
		shortened = in_shard;
	shortened >>= CACHE_UNIT_SHIFT;
	if (at > shortened && now_u < at + (cache & CACHE_SPAN_MAX))
		return true;

	ck.client = c->client;
	ck.server = c->server;
	a = bpf_map_lookup_elem(&allocs, (struct tb_alloc_key *)&ck);
	if (!a || a->id != c->alloc_id)
		return false;
	if (peer_side) {
		struct tb_chan *cc;

		ck.chan = c->chan;
		cc = bpf_map_lookup_elem(&chans, &ck);
		if (!cc || cc->alloc_id != c->alloc_id || !ep_eq(&cc->peer, &c->peer) ||
		    !ep_eq(&cc->relay, &c->relay))
			return false;
	}
	until = min_u64(a->expires_ns, c->chan_expires_ns);
	if (cfg_channel_needs_permission) {
		pk.relay = c->relay;
		pk.peer = c->peer;
		pk.peer.port = 0;
		p = bpf_map_lookup_elem(&perms, &pk);
		if (!p || p->alloc_id != c->alloc_id || p->epoch != c->perm_epoch)
			return false;
		until = min_u64(until, p->expires_ns);
	}
	if (now >= until)
		return false;
	span = (until >> CACHE_UNIT_SHIFT) - now_u;
	if (span > CACHE_SPAN_MAX)
		span = CACHE_SPAN_MAX;
	/* one store: a CPU refreshing the cache at the same time can overwrite it, but each value
	 * is whole and was true when computed */
	*(volatile __u64 *)&c->cache = (now_u << CACHE_SPAN_BITS) | span;
	return true;
}

/* ---------------------------------------------------------------------------------------------
 * XDP: remember a request until its response, and stamp what cannot be remembered.
 */

/* The blind-spot slot of a (client address, server address) pair, for either family: IPv4
 * addresses fill the first word of `ip` and leave the rest zero. */
static __always_inline __u32 blind_slot(const __u32 *client_ip, const __u32 *server_ip)
{
	__u32 h = 0x9E3779B9;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = (h ^ client_ip[i]) * 0x85EBCA77;
		h = (h ^ server_ip[i]) * 0xC2B2AE3D;
	}
	h ^= h >> 16;
	return h & (TB_BLIND_SLOTS - 1);
}

static __always_inline void blind_stamp_slot(__u32 slot, __u32 reason)
{
	__u64 *t = bpf_map_lookup_elem(&blind, &slot);

	if (t)
		*(volatile __u64 *)t = tb_now();
	if (reason)
		stat_inc(reason);
}

/* Something from `saddr` to `daddr` (IPv4) went past the recorder unseen. */
static __always_inline void blind_stamp4(__u32 saddr, __u32 daddr, __u32 reason)
{
	__u32 c[4] = { saddr, 0, 0, 0 }, s[4] = { daddr, 0, 0, 0 };

	blind_stamp_slot(blind_slot(c, s), reason);
}

/* The last blind time of the client of `k` (0: never). */
static __always_inline __u64 blind_since(const struct tb_ep *client, const struct tb_ep *server)
{
	__u32 c[4], s[4];
	__u32 slot;
	__u64 *t;

	__builtin_memcpy(c, client->ip, sizeof(c));
	__builtin_memcpy(s, server->ip, sizeof(s));
	slot = blind_slot(c, s);
	t = bpf_map_lookup_elem(&blind, &slot);
	return t ? *(volatile __u64 *)t : ~0ULL;
}

/* Add to `acc` the one's complement sum of `len` bytes of packet data at `off` (zero-padded to
 * a whole word). -1 when the bytes cannot be read or are more than we check. */
static __always_inline int xdp_sum(struct xdp_md *ctx, __u32 off, __u32 len, __u64 *acc)
{
	__u32 zero = 0, total;
	struct tb_csum_buf *buf = bpf_map_lookup_elem(&csum_buf, &zero);

	if (!buf)
		return -1;
	/* 1..TB_MAX_STUN_REQUEST, checked on the register the load uses: written as two compares,
	 * clang merges them into one unsigned compare whose lower bound the 6.1 verifier cannot
	 * see (a length of 0 for bpf_xdp_load_bytes) */
	len -= 1;
	barrier_var(len);
	if (len > TB_MAX_STUN_REQUEST - 1)
		return -1;
	len += 1;
	if (bpf_xdp_load_bytes(ctx, off, buf->b, len))
		return -1;
	/* zero the rest of the last 32-bit word: bpf_csum_diff sums whole words */
	buf->b[len] = 0;
	buf->b[len + 1] = 0;
	buf->b[len + 2] = 0;
	total = (len + 3) & ~3U;
#pragma unroll
	for (int i = 0; i < TB_MAX_STUN_REQUEST / 256; i++) {
		__u32 at = (__u32)i * 256, n;
		__s64 part;

		if (at >= total)
			break;
		n = total - at;
		if (n > 256)
			n = 256;
		part = bpf_csum_diff(0, 0, (__be32 *)&buf->b[at], n, 0);
		if (part < 0)
			return -1;
		*acc += (__u32)part;
	}
	return 0;
}

static __always_inline bool pending_same(const struct tb_pending *a, const struct tb_pending *b)
{
	const __u32 *x = (const __u32 *)a->peers, *y = (const __u32 *)b->peers;

	if (a->method != b->method || a->chan != b->chan || a->npeers != b->npeers ||
	    a->family_sel != b->family_sel || a->peer_overflow != b->peer_overflow ||
	    a->lifetime != b->lifetime)
		return false;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(a->peers) / 4); i++)
		if (x[i] != y[i])
			return false;
	return true;
}

/* A copy of `v` arrived under the key of `old`: the same request again changes nothing (its
 * first sighting keeps counting); another request under the same ID poisons the entry for good. */
static __always_inline void pending_seen_again(struct tb_pending *old, const struct tb_pending *v)
{
	if (!pending_same(old, v)) {
		old->conflict = 1;
		stat_inc(TB_STAT_PENDING_CONFLICT);
	}
}

/* The client of `k` is blind: something of it went past the recorder unseen. */
static __always_inline void blind_stamp_key(const struct tb_pending_key *k, __u32 reason)
{
	__u32 c[4], sv[4];

	__builtin_memcpy(c, k->client.ip, sizeof(c));
	__builtin_memcpy(sv, k->server.ip, sizeof(sv));
	blind_stamp_slot(blind_slot(c, sv), reason);
}

/* Record the request parsed into `s->msg`, from `s->req_key.client` to `s->req_key.server`. A
 * request of a method we commit that is not recorded for any reason (one we do not mirror, such as
 * a ChannelBind naming two peers, which coturn binds to the last; a full table) leaves its client
 * blind: the server processes it, and its answer must not be taken for another request's. */
static __always_inline void record_request(struct tb_scratch *s)
{
	const struct stun_msg *m = &s->msg;
	struct tb_pending_key *k = &s->req_key;
	struct tb_pending *v = &s->req;
	struct tb_pending *old;
	__u64 now = tb_now();

	switch (m->method) {
	case STUN_ALLOCATE:
	case STUN_REFRESH:
		break;
	case STUN_CREATE_PERMISSION:
		if (!m->npeers) {
			blind_stamp_key(k, 0);
			return;
		}
		break;
	case STUN_CHANNEL_BIND:
		if (!m->has_chan || m->npeers != 1) {
			blind_stamp_key(k, 0);
			return;
		}
		break;
	default:
		return;
	}

	__builtin_memcpy(k->txid, m->txid, sizeof(k->txid));
	__builtin_memcpy(v->txid, m->txid, sizeof(v->txid));
	v->method = m->method;
	v->chan = m->chan;
	v->npeers = m->npeers;
	v->family_sel = m->has_family;
	v->peer_overflow = m->peer_overflow;
	v->lifetime = m->has_lifetime ? m->lifetime : TB_NO_LIFETIME;
	__builtin_memcpy(v->peers, m->peers, sizeof(v->peers));
	v->created_ns = now;

	old = bpf_map_lookup_elem(&pending, k);
	if (old && now - old->created_ns > 2 * cfg_pending_lifetime_ns) {
		/* long past any answer: this transaction ID is used again, start afresh */
		if (bpf_map_update_elem(&pending, k, v, BPF_EXIST) == 0) {
			stat_inc(TB_STAT_PENDING_ADDED);
			return;
		}
		old = bpf_map_lookup_elem(&pending, k);
	}
	if (old) {
		pending_seen_again(old, v);
		return;
	}
	if (bpf_map_update_elem(&pending, k, v, BPF_NOEXIST) == 0) {
		stat_inc(TB_STAT_PENDING_ADDED);
		return;
	}
	/* Another CPU inserted the same key first: compare with its request as above. */
	old = bpf_map_lookup_elem(&pending, k);
	if (old) {
		pending_seen_again(old, v);
		return;
	}
	blind_stamp_key(k, TB_STAT_RECORD_FULL);
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

/* Does the server's static peer policy refuse this peer address? (Counted when it does.) */
static __always_inline bool peer_refused(const struct tb_ep *peer)
{
	struct tb_peer_prefix k = {};

	k.prefixlen = 32 + (peer->family == TB_AF_INET ? 32 : 128);
	k.family = peer->family;
	__builtin_memcpy(k.ip, peer->ip, sizeof(k.ip));
	if (!bpf_map_lookup_elem(&refused_peers, &k))
		return false;
	stat_inc(TB_STAT_PEER_REFUSED);
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

/* The live allocation of `ak` (not ended here, deadline ahead), or 0. */
static __always_inline struct tb_alloc *alloc_live(const struct tb_alloc_key *ak, __u64 now)
{
	struct tb_alloc *a = bpf_map_lookup_elem(&allocs, ak);

	return a && now < a->expires_ns ? a : 0;
}

/* How long after our deadline the server may still hold an allocation: our margin, and slack for
 * its timers and the answer's way out. */
#define ALLOC_KEEP_NS (cfg_margin_ns + 2 * NS_PER_SEC)
#define ALLOC_GIVEN_UP_KEEP_NS (3600 * NS_PER_SEC + ALLOC_KEEP_NS)

/* An allocation ends here: its channels and permissions no longer validate (its deadline is 0)
 * and its traffic goes to the server from now on. The entry stays until keep_until_ns, so that a
 * retransmitted Allocate is still recognised; the loader's sweep removes it then. `gone`: the
 * server deletes it too (Refresh 0, 437), so it need not be remembered past ALLOC_KEEP_NS. */
static __always_inline void end_allocation(const struct tb_alloc_key *ak, __u32 reason, __u64 now,
					   bool gone)
{
	struct tb_alloc *a = bpf_map_lookup_elem(&allocs, ak);

	if (!a)
		return;
	if (gone && now + ALLOC_KEEP_NS < a->keep_until_ns)
		a->keep_until_ns = now + ALLOC_KEEP_NS;
	/* Given up while the server holds it: its Refreshes are no longer followed, so remember
	 * its Allocate for as long as the server may keep it (coturn's default maximum). */
	if (!gone && a->keep_until_ns < now + ALLOC_GIVEN_UP_KEEP_NS)
		a->keep_until_ns = now + ALLOC_GIVEN_UP_KEEP_NS;
	if (now >= a->expires_ns)
		return;
	a->expires_ns = 0;
	alloc_shortened(a->id);
	stat_inc(reason);
}

/* The server holds the allocation still, but we give it up (we cannot mirror what it did). */
static __always_inline void drop_allocation(const struct tb_alloc_key *ak, __u32 reason, __u64 now)
{
	end_allocation(ak, reason, now, false);
}

static __always_inline bool txid_same(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];
}

/* Index the relayed address `relay` of the allocation `ak` with ID `id` (`relays`); false when the
 * index is full. An allocation of another client still live here on that address has ended at the
 * server: it closed that socket before it could hand the address out again. It ends here too, now:
 * the loader, finding the new allocation under the address when it reads the old socket's destroy
 * notice, would end that one instead. */
static __always_inline bool index_relay(const struct tb_ep *relay, const struct tb_alloc_key *ak,
					__u64 id, __u64 now)
{
	struct tb_relay *was = bpf_map_lookup_elem(&relays, relay);
	struct tb_relay r = { .alloc = *ak, .alloc_id = id };

	if (was && !(ep_eq(&was->alloc.client, &ak->client) &&
		     ep_eq(&was->alloc.server, &ak->server))) {
		struct tb_alloc_key old = was->alloc;
		struct tb_alloc *a = bpf_map_lookup_elem(&allocs, &old);

		if (a && (ep_eq(&a->relay[0], relay) || ep_eq(&a->relay[1], relay)))
			end_allocation(&old, TB_STAT_RELAY_TAKEN, now, true);
	}
	return bpf_map_update_elem(&relays, relay, &r, BPF_ANY) == 0;
}

/*
 * An Allocate success. coturn answers a retransmitted Allocate (the transaction that created the
 * allocation) with a rebuilt answer and changes nothing (its LIFETIME then reads what is left, or
 * the default in the last second), so neither do we; it answers another transaction on a live
 * allocation with 437. `first`: the first answer to its request (it may create an allocation);
 * otherwise a repeated answer, which may only confirm or give up.
 */
static __always_inline void commit_allocate(const struct tb_alloc_key *ak, const struct stun_msg *m,
					    __u64 now, bool first)
{
	struct tb_alloc a = {};
	struct tb_alloc *old;
	__u64 old_id;

	if (!m->nrelay || !m->has_lifetime) {
		stat_inc(TB_STAT_STUN_MALFORMED);
		return;
	}
	old = bpf_map_lookup_elem(&allocs, ak);
	if (old && txid_same(old->txid, m->txid)) {
		stat_inc(TB_STAT_LEARN_DUPLICATE);
		return;
	}
	if (m->has_mobility) {
		/* With mobility the server may move the allocation to another 5-tuple by a Refresh
		 * from there; we key allocations by 5-tuple, so leave it to the server. */
		struct tb_alloc *live = alloc_live(ak, now);

		if (live) {
			live->expires_ns = 0;
			alloc_shortened(live->id);
		}
		stat_inc(TB_STAT_NOT_MIRRORED);
		return;
	}
	if (!first || (old && now < old->expires_ns)) {
		/* Answered again with something else, or another transaction granted on an
		 * allocation live here (coturn answers that with 437): we cannot tell what the
		 * server holds. */
		drop_allocation(ak, TB_STAT_NOT_MIRRORED, now);
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
	/* read before the update, which hands the old element back to the map for reuse */
	old_id = old ? old->id : 0;
	a.id = __sync_fetch_and_add(&tb_alloc_seq, 1) + 1;
	{
		__u32 slot = a.id & (TB_RECENT_ALLOCS - 1);
		struct tb_relay r = { .alloc = *ak, .alloc_id = a.id };

		bpf_map_update_elem(&recent_allocs, &slot, &r, BPF_ANY);
	}
	/* indexed first: an allocation the loader could not find by its relay socket is not
	 * committed (a stale entry left by a failed commit is harmless, see `relays`) */
	if (!index_relay(&a.relay[0], ak, a.id, now) ||
	    (a.relay[1].family && !index_relay(&a.relay[1], ak, a.id, now))) {
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}
	a.expires_ns = deadline(now, (__u64)m->lifetime * NS_PER_SEC);
	a.keep_until_ns = a.expires_ns + ALLOC_KEEP_NS;
	__builtin_memcpy(a.txid, m->txid, sizeof(a.txid));
	if (bpf_map_update_elem(&allocs, ak, &a, BPF_ANY)) {
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}
	if (old)
		alloc_shortened(old_id); /* the ended allocation's channels stay dead (another id) */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u32 port = bpf_ntohs(a.relay[i].port), one = 1;

		if (a.relay[i].family)
			bpf_map_update_elem(&relay_ports, &port, &one, BPF_ANY);
	}
	stat_inc(TB_STAT_LEARN_ALLOC);
}

/* A Refresh's new deadline `exp` for the live allocation `a`. */
static __always_inline void set_alloc_deadline(struct tb_alloc *a, __u64 exp)
{
	bool shorter = exp < a->expires_ns;

	a->expires_ns = exp;
	if (exp + ALLOC_KEEP_NS > a->keep_until_ns)
		a->keep_until_ns = exp + ALLOC_KEEP_NS;
	if (shorter)
		alloc_shortened(a->id);
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
	/* An allocation that ended here, or whose deadline has passed (the server's may not have:
	 * our margin), is never revived: we may not know what the server did meanwhile. */
	a = alloc_live(ak, now);
	if (!a) {
		stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	if (m->lifetime == 0) {
		/* Deallocation: the allocation ends now. (With a family named, coturn removes only
		 * that family's relayed address: ending both is the safe side, the other family's
		 * traffic goes to the server.) */
		end_allocation(ak, TB_STAT_LEARN_DEALLOC, now, true);
		return;
	}
	exp = deadline(now, (__u64)m->lifetime * NS_PER_SEC);
	/* A dual allocation has a deadline per family at the server, one here. coturn refreshes
	 * only the family a REQUESTED-ADDRESS-FAMILY (or its 0x8032) names, and a Refresh without
	 * one only the families still alive (checked with coturn 4.6.1: after Refresh(IPv6) the
	 * IPv4 relayed address ends at its old time, although the response carries the new
	 * LIFETIME). So a family-selective Refresh may shorten our deadline but never extend it. */
	if (a->relay[1].family && p->family_sel)
		exp = min_u64(exp, a->expires_ns);
	set_alloc_deadline(a, exp);
	stat_inc(TB_STAT_LEARN_REFRESH);
}

/*
 * Set the permission of `peer` (address only) on `relay` to `expires`, replacing what it had, as
 * the server does (`shorten_only`: only if that is sooner, for a request the server applied again).
 * A permission still live here keeps its epoch (its channels live on); one that had expired or
 * belonged to another allocation gets a new one, and the channels bound under the old one stay
 * dead. Returns the epoch (never 0), or 0 when the map is full or there was nothing to shorten.
 *
 * What a shortening voids: the permission vouched only for channels of its owner (the fast path
 * checks tb_perm.alloc_id), so the old owner's shard. This allocation's shard is raised too: the
 * entry read here may be stale, another CPU committing for this allocation (a ChannelBind and a
 * CreatePermission answered at once) may have written its own in between, which this write
 * replaces. (A relayed address belongs to one allocation at a time at the server, and only an
 * allocation live here writes its permissions: no third writer.)
 */
static __always_inline __u64 set_perm(const struct tb_ep *relay, const struct tb_ep *peer,
				      __u64 alloc_id, __u64 expires, __u64 now, bool shorten_only)
{
	struct tb_perm_key pk = {};
	struct tb_perm pv = {};
	struct tb_perm *old;
	__u64 old_owner;
	bool shorter;

	pk.relay = *relay;
	pk.peer = *peer;
	pk.peer.port = 0;
	pv.alloc_id = alloc_id;
	pv.expires_ns = expires;
	old = bpf_map_lookup_elem(&perms, &pk);
	if (old && old->alloc_id == alloc_id && now < old->expires_ns)
		pv.epoch = old->epoch;
	else if (shorten_only)
		return 0;
	else
		pv.epoch = __sync_fetch_and_add(&tb_epoch_seq, 1) + 1;
	if (shorten_only && old && expires >= old->expires_ns)
		return pv.epoch;
	shorter = old && (expires < old->expires_ns || pv.epoch != old->epoch);
	/* read before the update, which hands the old element back to the map for reuse */
	old_owner = old ? old->alloc_id : alloc_id;
	if (bpf_map_update_elem(&perms, &pk, &pv, BPF_ANY))
		return 0;
	if (shorter) {
		alloc_shortened(alloc_id);
		if (old_owner != alloc_id)
			alloc_shortened(old_owner);
	}
	return pv.epoch;
}

/* A CreatePermission success for the peers of `p` (`again`: a repeated answer, which may only
 * shorten). */
static __always_inline void commit_permissions(const struct tb_alloc_key *ak,
					       const struct tb_pending *p, __u64 now, bool again)
{
	struct tb_alloc *a = alloc_live(ak, now);
	__u64 perm_exp = deadline(now, cfg_permission_lifetime_ns);
	__u64 id;

	if (!a) {
		if (!again)
			stat_inc(TB_STAT_LEARN_NO_ALLOC);
		return;
	}
	if (p->peer_overflow) {
		/* coturn resets the permission of every peer named, which can shorten one that a
		 * ChannelBind had set to the channel lifetime (and its channels end with it). We
		 * do not know the peers beyond the ones we keep: leave the allocation to it. */
		drop_allocation(ak, TB_STAT_NOT_MIRRORED, now);
		return;
	}
	id = a->id;
#pragma unroll
	for (int i = 0; i < TB_MAX_REQ_PEERS; i++) {
		const struct tb_ep *peer = &p->peers[i];
		const struct tb_ep *relay;

		if (i >= p->npeers)
			break;
		relay = relay_for(a, peer->family);
		if (!relay)
			continue;
		if (again) {
			set_perm(relay, peer, id, perm_exp, now, true);
			continue;
		}
		if (peer_refused(peer))
			continue;
		/* coturn: the permission is reset to --permission-lifetime, whatever it was (a
		 * ChannelBind may have set it to the channel lifetime), and a bound channel is not
		 * refreshed: it ends with this permission if that comes first. */
		if (!set_perm(relay, peer, id, perm_exp, now, false)) {
			stat_inc(TB_STAT_STATE_FULL);
			continue;
		}
		stat_inc(TB_STAT_LEARN_PERM);
	}
}

/*
 * What a recorded request takes away if the server grants it, applied when it is recorded: the
 * answer can be lost on its way out (a firewall's OUTPUT rule, a client that stops answering ARP),
 * and the server has applied the request all the same. A CreatePermission resets each named
 * peer's permission to the permission lifetime; a Refresh with a LIFETIME sets the allocation's
 * to what the server grants at least for it (cfg_refresh_floor_s; the answer may extend it
 * again), and one without LIFETIME or asking for more than the server's maximum to the default
 * the server grants then, where the profile knows it (cfg_refresh_default_s). Shorten-only,
 * nothing counted; if the server refuses the request, we have only offloaded less for a moment. (A Refresh 0 whose answer
 * is lost is caught by the sweep within a second: the server closes the relay socket.)
 */
_Static_assert(__builtin_offsetof(struct tb_pending_key, client) ==
		       __builtin_offsetof(struct tb_alloc_key, client) &&
		       __builtin_offsetof(struct tb_pending_key, server) ==
		       __builtin_offsetof(struct tb_alloc_key, server),
	       "a pending key starts with its allocation's key");

static __always_inline void request_takes_away(const struct tb_pending_key *k,
					       const struct tb_pending *v)
{
	/* the request's allocation key is the start of its pending key (no copy: the recorder's
	 * stack is at its limit) */
	const struct tb_alloc_key *ak = (const struct tb_alloc_key *)k;
	struct tb_alloc *a;
	__u64 now = tb_now(), exp;
	__u32 granted;

	switch (v->method) {
	case STUN_CREATE_PERMISSION:
		if (!v->peer_overflow)
			commit_permissions(ak, v, now, true);
		return;
	case STUN_REFRESH:
		if (v->lifetime == 0)
			return;
		granted = v->lifetime;
		if (granted == TB_NO_LIFETIME || (cfg_refresh_max_s && granted >= cfg_refresh_max_s)) {
			if (!cfg_refresh_default_s)
				return;
			granted = cfg_refresh_default_s;
		}
		/* what the server grants at least: coturn raises a short LIFETIME to 600 s, and a
		 * deadline within our margin would end the allocation here before the answer that
		 * keeps it alive at the server arrives (nothing revives it then) */
		if (granted < cfg_refresh_floor_s)
			granted = cfg_refresh_floor_s;
		a = alloc_live(ak, now);
		exp = deadline(now, (__u64)granted * NS_PER_SEC);
		if (a && exp < a->expires_ns)
			set_alloc_deadline(a, exp);
		return;
	}
}

/* A binding that must not relay any more, left in its map for the sweep to delete. */
static __always_inline void chan_kill(struct tb_chan *c)
{
	*(volatile __u64 *)&c->chan_expires_ns = 0;
	*(volatile __u64 *)&c->cache = 0;
}

static __always_inline void commit_channel(const struct tb_alloc_key *ak,
					   const struct tb_pending *p, struct tb_chan *cp, __u64 now)
{
	struct tb_alloc *a = alloc_live(ak, now);
	const struct tb_ep *relay;
	struct tb_chan_key ck = {};
	struct tb_peer_key rk = {};
	struct tb_chan *old, *other;
	/* whether a binding dies here, and whether one of another allocation does */
	bool repointed = false, others = false, full;
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
	if (peer_refused(&p->peers[0]))
		return;
	c.client = ak->client;
	c.server = ak->server;
	c.relay = *relay;
	c.peer = p->peers[0];
	c.chan = p->chan;
	c.alloc_id = a->id;
	c.chan_expires_ns = exp;
	/* A ChannelBind also installs or refreshes the peer's permission: for the channel lifetime
	 * at coturn, the permission lifetime at pion and in RFC 8656. */
	c.perm_epoch = set_perm(relay, &c.peer, a->id, deadline(now, cfg_bind_permission_ns), now,
				false);
	if (!c.perm_epoch) {
		stat_inc(TB_STAT_STATE_FULL);
		return;
	}

	/* Re-pointing: the server grants a channel number for another peer, or a peer on another
	 * number, only once the old binding is gone there. Its other half dies in this commit, so
	 * neither direction can use it (a datagram from the old peer must not reach the client as
	 * ChannelData on a number that now means someone else). It dies in place, for the sweep to
	 * delete: a deleted element goes back to the preallocated map's free list at once, and this
	 * very commit's insert would hand it, refilled, to a fast path still holding it. */
	ck.client = ak->client;
	ck.server = ak->server;
	ck.chan = p->chan;
	old = bpf_map_lookup_elem(&chans, &ck);
	if (old && (!ep_eq(&old->peer, &c.peer) || !ep_eq(&old->relay, &c.relay))) {
		rk.peer = old->peer;
		rk.relay = old->relay;
		other = bpf_map_lookup_elem(&peers, &rk);
		if (other && other->chan == old->chan && ep_eq(&other->client, &old->client) &&
		    ep_eq(&other->server, &old->server)) {
			others |= other->alloc_id != c.alloc_id;
			chan_kill(other);
		}
		others |= old->alloc_id != c.alloc_id;
		repointed = true;
	}
	/* Its id: a refresh of the live binding keeps it (and so its counters); anything else is a
	 * new binding, also the same channel, peer and relay under a new allocation or permission. */
	if (old && !repointed && old->alloc_id == c.alloc_id && old->perm_epoch == c.perm_epoch &&
	    *(volatile __u64 *)&old->chan_expires_ns > now)
		c.id = old->id;
	else
		c.id = __sync_fetch_and_add(&tb_epoch_seq, 1) + 1;
	rk.peer = c.peer;
	rk.relay = c.relay;
	old = bpf_map_lookup_elem(&peers, &rk);
	if (old && (old->chan != c.chan || !ep_eq(&old->client, &c.client) ||
		    !ep_eq(&old->server, &c.server))) {
		ck.client = old->client;
		ck.server = old->server;
		ck.chan = old->chan;
		other = bpf_map_lookup_elem(&chans, &ck);
		if (other && ep_eq(&other->peer, &old->peer) && ep_eq(&other->relay, &old->relay)) {
			others |= other->alloc_id != c.alloc_id;
			chan_kill(other);
		}
		others |= old->alloc_id != c.alloc_id;
		ck.client = ak->client;
		ck.server = ak->server;
		ck.chan = p->chan;
		repointed = true;
	}
	full = bpf_map_update_elem(&chans, &ck, &c, BPF_ANY) != 0;
	if (!full && bpf_map_update_elem(&peers, &rk, &c, BPF_ANY)) {
		bpf_map_delete_elem(&chans, &ck);
		full = true;
	}
	/* The bindings that died (killed in place, or replaced under their key) vouched for their
	 * own allocations: usually this one (a client re-points its own channel), else one whose
	 * entries outlived it (the same 5-tuple or relayed address allocated again), which is rare
	 * enough to void everything for. Also when the new binding did not fit: the old ones are
	 * dead all the same, and a CPU that was re-checking one may have written its cache back. */
	if (repointed) {
		if (others)
			state_shortened();
		else
			alloc_shortened(c.alloc_id);
	}
	stat_inc(full ? TB_STAT_STATE_FULL : TB_STAT_LEARN_CHANNEL);
#undef c
}

/*
 * A response we cannot match to a request we understood and saw whole: the pending entry was
 * evicted or is stale, the request was one we could not see or parse, or its transaction ID was
 * reused with other contents. The server did it anyway, and it is the authority, so its answer
 * may still take state away, never add any:
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
			end_allocation(ak, TB_STAT_LEARN_DEALLOC, now, true);
			return;
		}
		a = alloc_live(ak, now);
		exp = deadline(now, (__u64)m->lifetime * NS_PER_SEC);
		if (a && exp < a->expires_ns)
			set_alloc_deadline(a, exp);
		return;
	case STUN_ALLOCATE:
	case STUN_CREATE_PERMISSION:
	case STUN_CHANNEL_BIND:
		drop_allocation(ak, TB_STAT_NOT_MIRRORED, now);
		return;
	}
}

/* May the answer to pending request `p` be committed? It must be the first answer, to a request
 * seen whole and without a conflicting copy, answered within the pending lifetime, whose client
 * had no blind spot within the pending lifetime of it, before or after: a request the server got
 * unseen may have been held (queued) before the recorded one and answered after it. Anything else
 * poisons the entry (later answers to it go the unmatched way) or, for a repeated answer, is the
 * duplicate way. Returns 1 to commit, 0 for a repeated answer, -1 for the unmatched way. */
static __always_inline int pending_usable(struct tb_pending *p, const struct stun_msg *m,
					  const struct tb_ep *client, const struct tb_ep *server,
					  __u64 now)
{
	__u64 blind_at = blind_since(client, server);

	if (p->conflict || p->method != m->method) {
		p->conflict = 1;
		stat_inc(TB_STAT_LEARN_NO_PENDING);
		return -1;
	}
	if (now - p->created_ns > cfg_pending_lifetime_ns || blind_at >= p->created_ns ||
	    p->created_ns - blind_at <= cfg_pending_lifetime_ns) {
		p->conflict = 1;
		stat_inc(TB_STAT_LEARN_STALE);
		return -1;
	}
	if (__sync_val_compare_and_swap(&p->answered, 0, 1) != 0)
		return 0;
	return 1;
}

/*
 * A second answer to a request already answered (the request, or the answer, came twice). The
 * server processed the same request again: an Allocate changes nothing there (commit_allocate
 * knows its transaction); a Refresh or a CreatePermission applies again, so it may shorten
 * (never extend) ours — a ChannelBind in between may have extended the permission, and coturn's
 * second CreatePermission takes it back; a ChannelBind applies again a moment after ours, which
 * ends a moment earlier; an error changes nothing.
 */
static __always_inline void commit_duplicate(const struct tb_alloc_key *ak,
					     const struct stun_msg *m, const struct tb_pending *p,
					     __u64 now)
{
	if (m->cls != STUN_SUCCESS)
		return;
	switch (m->method) {
	case STUN_ALLOCATE:
		commit_allocate(ak, m, now, false);
		return;
	case STUN_REFRESH:
		stat_inc(TB_STAT_LEARN_DUPLICATE);
		commit_unmatched(ak, m, now);
		return;
	case STUN_CREATE_PERMISSION:
		stat_inc(TB_STAT_LEARN_DUPLICATE);
		commit_permissions(ak, p, now, true);
		return;
	default:
		stat_inc(TB_STAT_LEARN_DUPLICATE);
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
	int use;
#define req (s->req)

	if (m->cls != STUN_SUCCESS && m->cls != STUN_ERROR)
		return;
	switch (m->method) {
	case STUN_ALLOCATE:
	case STUN_REFRESH:
	case STUN_CREATE_PERMISSION:
	case STUN_CHANNEL_BIND:
		break;
	default:
		return;
	}
	k.client = *client;
	k.server = *server;
	__builtin_memcpy(k.txid, m->txid, sizeof(k.txid));
	ak.client = *client;
	ak.server = *server;
	/* 437 Allocation Mismatch to a Refresh: the server has no allocation for this 5-tuple. */
	if (m->cls == STUN_ERROR && m->method == STUN_REFRESH && m->error_code == 437)
		end_allocation(&ak, TB_STAT_LEARN_DEALLOC, now, true);
	p = bpf_map_lookup_elem(&pending, &k);
	if (!p) {
		stat_inc(TB_STAT_LEARN_NO_PENDING);
		commit_unmatched(&ak, m, now);
		return;
	}
	req = *p;
	/* the entry may have been deleted and reused for another request meanwhile (the transaction
	 * ID is the client's to choose: also the element still being under this key says so) */
	if (!txid_same(req.txid, m->txid) || bpf_map_lookup_elem(&pending, &k) != p) {
		stat_inc(TB_STAT_LEARN_NO_PENDING);
		commit_unmatched(&ak, m, now);
		return;
	}
	use = pending_usable(p, m, client, server, now);
	if (use < 0)
		commit_unmatched(&ak, m, now);
	else if (use == 0)
		commit_duplicate(&ak, m, &req, now);
	if (use <= 0)
		return;
	if (m->cls == STUN_ERROR) {
		stat_inc(TB_STAT_LEARN_ERROR);
		/* A refused Allocate's record is done with: kept, it would hold its slot for twice the
		 * pending lifetime, and every client's first Allocate is refused (401), so a burst of
		 * clients would fill the table. An Allocate commits nothing of its request (the answer
		 * names the relayed addresses, the lifetime and the transaction), so a later success
		 * under this ID, for a copy the server still held, commits what the server did. Any
		 * other method's record stays: a copy of a refused ChannelBind still queued at the
		 * server may succeed later (its allocation came meanwhile), and a new record under the
		 * same ID with other contents would take that success for its own. */
		if (req.method == STUN_ALLOCATE)
			bpf_map_delete_elem(&pending, &k);
		return;
	}

	switch (req.method) {
	case STUN_ALLOCATE:
		commit_allocate(&ak, m, now, true);
		break;
	case STUN_REFRESH:
		commit_refresh(&ak, m, &req, now);
		break;
	case STUN_CREATE_PERMISSION:
		commit_permissions(&ak, &req, now, false);
		break;
	case STUN_CHANNEL_BIND:
		commit_channel(&ak, &req, &s->chan, now);
		break;
	}
#undef req
}

#endif /* TB_STATE_H */
