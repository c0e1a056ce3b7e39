// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * xdp_pass: passes every frame. What the README advises for the far end of a veth the agent
 * redirects into (a container's interface): any XDP program gives that end NAPI, so frames sent
 * into the veth from XDP are received (lab.rs, XdpPass).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
