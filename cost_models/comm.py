"""Time of one collective over a group of GPUs: alpha-beta per algorithm, hierarchical over
the scale-up domains.

A link is (alpha, bw): alpha is the per-step latency, bw the achievable bytes/s per GPU and
direction (peak × link efficiency). Inside one domain the link is NVLink. A flat algorithm over
a group that spans domains steps at the scale-out latency, and its bandwidth is the smaller of
NVLink and the domain's NICs striped over channels (`g_min × scaleout bw`, `g_min` the fewest
group GPUs in any domain). With n ranks and S = `nbytes`:

    ring all-reduce        2(n-1)·alpha + 2(n-1)/n · S/bw
    tree all-reduce        2·ceil(log2 n)·alpha + 2·S/bw            (reduce then broadcast)
    ring all-gather        (n-1)·alpha + (n-1)/n · S/bw             (S = output size)
    ring reduce-scatter    (n-1)·alpha + (n-1)/n · S/bw             (S = input size)
    tree broadcast         ceil(log2 n)·alpha + S/bw                (pipelined)
    ring broadcast         (n-1)·alpha + S/bw                       (pipelined chain)
    pairwise all-to-all    max over link kinds of peers·(alpha + S/(n·bw))
    send/recv              alpha + S/bw

Hierarchical (g GPUs in each of D domains, n = g·D; requires the same g in every domain):
all-reduce = intra reduce-scatter(S) + inter all-reduce(S/g) over D ranks on scale-out links
(best of ring and tree; each GPU uses its own NIC, rail-aligned) + intra all-gather(S);
all-gather = inter all-gather(S/g) + intra all-gather(S); reduce-scatter mirrors it;
broadcast = inter broadcast(S) + intra broadcast(S). Inside one domain it equals the ring.

`algorithm="auto"` takes the fastest algorithm that applies. Not modelled: NVLink SHARP
(NVLS) and in-network reductions, congestion from other traffic, message-size protocol switches
inside NCCL (the fitted alpha absorbs them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from cost_models.hardware import HardwareSpec
from cost_models.topology import GroupShape, group_shape
from ir.errors import InputError

COLLECTIVE_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "all_reduce": ("ring", "tree", "hierarchical"),
    "all_gather": ("ring", "hierarchical"),
    "reduce_scatter": ("ring", "hierarchical"),
    "all_to_all": ("pairwise",),
    "send_recv": ("direct",),
    "broadcast": ("ring", "tree", "hierarchical"),
}
COLLECTIVE_KINDS: tuple[str, ...] = tuple(COLLECTIVE_ALGORITHMS)


@dataclass(frozen=True, kw_only=True)
class Link:
    """Per-step latency and achievable per-GPU, per-direction bandwidth."""

    alpha_s: float
    bytes_per_s: float


def scaleup_link(hw: HardwareSpec) -> Link:
    return Link(alpha_s=hw.scaleup_latency_s,
                bytes_per_s=hw.scaleup_bytes_per_s * hw.scaleup_link_efficiency)


def scaleout_link(hw: HardwareSpec) -> Link:
    return Link(alpha_s=hw.scaleout_latency_s,
                bytes_per_s=hw.scaleout_bytes_per_s * hw.scaleout_link_efficiency)


def flat_link(hw: HardwareSpec, shape: GroupShape) -> Link:
    """The link a flat (ring/tree) algorithm sees over the whole group."""
    up = scaleup_link(hw)
    if shape.domains == 1:
        return up
    out = scaleout_link(hw)
    nics = min(shape.gpus_per_domain)
    return Link(alpha_s=out.alpha_s, bytes_per_s=min(up.bytes_per_s, nics * out.bytes_per_s))


def ring_all_reduce_s(n: int, nbytes: float, link: Link) -> float:
    return 2 * (n - 1) * link.alpha_s + 2 * (n - 1) / n * nbytes / link.bytes_per_s


def tree_all_reduce_s(n: int, nbytes: float, link: Link) -> float:
    return 2 * math.ceil(math.log2(n)) * link.alpha_s + 2 * nbytes / link.bytes_per_s


def ring_all_gather_s(n: int, nbytes: float, link: Link) -> float:
    """Also reduce-scatter (same traffic reversed); `nbytes` is the full buffer."""
    return (n - 1) * link.alpha_s + (n - 1) / n * nbytes / link.bytes_per_s


def ring_broadcast_s(n: int, nbytes: float, link: Link) -> float:
    return (n - 1) * link.alpha_s + nbytes / link.bytes_per_s


def tree_broadcast_s(n: int, nbytes: float, link: Link) -> float:
    return math.ceil(math.log2(n)) * link.alpha_s + nbytes / link.bytes_per_s


def _flat(kind: str, algorithm: str, n: int, nbytes: float, link: Link) -> float:
    if kind == "all_reduce":
        return (ring_all_reduce_s if algorithm == "ring" else tree_all_reduce_s)(n, nbytes, link)
    if kind in ("all_gather", "reduce_scatter"):
        return ring_all_gather_s(n, nbytes, link)
    return (ring_broadcast_s if algorithm == "ring" else tree_broadcast_s)(n, nbytes, link)


def _hierarchical(kind: str, hw: HardwareSpec, shape: GroupShape, nbytes: float) -> float:
    g, d = shape.gpus_per_domain[0], shape.domains
    up, out = scaleup_link(hw), scaleout_link(hw)
    if g == 1:
        intra = 0.0
    elif kind == "broadcast":
        intra = min(tree_broadcast_s(g, nbytes, up), ring_broadcast_s(g, nbytes, up))
    else:
        intra = ring_all_gather_s(g, nbytes, up)
    if d == 1:
        inter = 0.0
    elif kind == "all_reduce":
        inter = min(ring_all_reduce_s(d, nbytes / g, out), tree_all_reduce_s(d, nbytes / g, out))
    elif kind == "broadcast":
        inter = min(tree_broadcast_s(d, nbytes, out), ring_broadcast_s(d, nbytes, out))
    else:
        inter = ring_all_gather_s(d, nbytes / g, out)
    # all-reduce = reduce-scatter + all-gather inside the domain, around the inter step.
    return (2 * intra if kind == "all_reduce" else intra) + inter


def _all_to_all(hw: HardwareSpec, shape: GroupShape, nbytes: float) -> float:
    n = shape.size
    up, out = scaleup_link(hw), scaleout_link(hw)
    # NVLink and NIC traffic run concurrently; the rank with the fewest local peers has the
    # most remote ones and finishes last.
    g = min(shape.gpus_per_domain)
    intra = (g - 1) * (up.alpha_s + nbytes / n / up.bytes_per_s)
    inter = (n - g) * (out.alpha_s + nbytes / n / out.bytes_per_s)
    return max(intra, inter)


def collective_seconds(
    hw: HardwareSpec,
    kind: str,
    nbytes: float,
    group: Iterable[int],
    algorithm: str = "auto",
) -> float:
    """Seconds for one collective of `kind` over the GPUs in `group` (physical GPU ids).

    `nbytes` is per rank and means:
      all_reduce      the buffer each rank holds (input size = output size);
      all_gather      the OUTPUT each rank ends with (= group size × each rank's input);
      reduce_scatter  the INPUT each rank starts with (= group size × each rank's output);
      all_to_all      the whole send buffer of one rank (equal chunks to every rank, itself
                      included; the own chunk does not move);
      send_recv       the bytes sent from the first GPU of the 2-GPU group to the second;
      broadcast       the buffer broadcast from the root.
    A group of one GPU costs 0. `algorithm` is "auto" (fastest that applies) or one of
    `COLLECTIVE_ALGORITHMS[kind]`.
    """
    if kind not in COLLECTIVE_ALGORITHMS:
        raise InputError(
            f"collective {kind!r} is unknown; choose one of {', '.join(COLLECTIVE_KINDS)}"
        )
    valid = COLLECTIVE_ALGORITHMS[kind]
    if algorithm != "auto" and algorithm not in valid:
        raise InputError(
            f"algorithm {algorithm!r} does not apply to {kind}; choose auto or one of "
            f"{', '.join(valid)}"
        )
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float)) or not (
        math.isfinite(nbytes) and nbytes >= 0
    ):
        raise InputError(f"{kind} size is {nbytes!r} bytes; needed a finite number >= 0")
    shape = group_shape(hw, group)
    if kind == "send_recv" and shape.size != 2:
        raise InputError(
            f"send_recv needs a group of exactly 2 GPUs (sender, receiver); got {shape.size}"
        )
    if shape.size == 1:
        return 0.0
    if kind == "send_recv":
        link = scaleup_link(hw) if shape.domains == 1 else scaleout_link(hw)
        return link.alpha_s + nbytes / link.bytes_per_s
    if kind == "all_to_all":
        return _all_to_all(hw, shape, nbytes)
    if algorithm == "hierarchical" and not shape.uniform:
        raise InputError(
            f"hierarchical {kind} needs the same number of group GPUs in every scale-up "
            f"domain; this group has {list(shape.gpus_per_domain)}; use auto, ring or tree"
        )
    candidates = valid if algorithm == "auto" else (algorithm,)
    times = []
    for alg in candidates:
        if alg == "hierarchical":
            if shape.uniform:
                times.append(_hierarchical(kind, hw, shape, nbytes))
        else:
            times.append(_flat(kind, alg, shape.size, nbytes, flat_link(hw, shape)))
    return min(times)
