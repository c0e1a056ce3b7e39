/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * Internet checksum helpers (RFC 1071, incremental update per RFC 1624).
 *
 * RFC 1624, eqn. 3: when a 16-bit word m of a checksummed region changes to m',
 *     HC' = ~(~HC + ~m + m')
 * in one's complement arithmetic. Because 2^16 = 1 (mod 0xffff), a 32-bit quantity can be added
 * as one value and folded later, and ~x of a 32-bit x is -x (mod 0xffff): removing a 32-bit field
 * is adding its complement. The sum is byte-order independent as long as every word is read the
 * way it lies in memory, so we add raw packet fields without byte swapping.
 *
 * The accumulator is 64 bits wide; a handful of additions cannot overflow it.
 */
#ifndef TB_CSUM_H
#define TB_CSUM_H

#include <linux/types.h>

/* Fold a 64-bit one's complement accumulator into 16 bits (not inverted). */
static __always_inline __u16 csum_fold64(__u64 acc)
{
	acc = (acc & 0xffffffff) + (acc >> 32);
	acc = (acc & 0xffffffff) + (acc >> 32);
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	return (__u16)acc;
}

/* Start an incremental update from the checksum field as found in the packet. */
static __always_inline __u64 csum_start(__u16 old_check)
{
	return (__u16)~old_check;
}

static __always_inline __u64 csum_add32(__u64 acc, __u32 v)
{
	return acc + v;
}

static __always_inline __u64 csum_sub32(__u64 acc, __u32 v)
{
	return acc + (__u32)~v;
}

static __always_inline __u64 csum_add16(__u64 acc, __u16 v)
{
	return acc + v;
}

static __always_inline __u64 csum_sub16(__u64 acc, __u16 v)
{
	return acc + (__u16)~v;
}

/* The checksum field value for an accumulator. */
static __always_inline __u16 csum_finish(__u64 acc)
{
	return (__u16)~csum_fold64(acc);
}

/* UDP over IPv4: a computed checksum of 0 is sent as 0xffff (0 means "no checksum"). */
static __always_inline __u16 csum_udp_finish(__u64 acc)
{
	__u16 c = csum_finish(acc);

	return c ? c : 0xffff;
}

#endif /* TB_CSUM_H */
