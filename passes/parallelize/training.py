"""Training: what a block costs for forward + backward + optimizer step, per GPU.

Two decisions are added to every strategy option when the workload trains (the ILP picks
them per block, like Helix's HOP-B slices):

- `zero`: the sharding level over the dp axis (ZeRO / FSDP). With N = dp and P the block's
  parameters on this rank after the model-parallel split (bytes per element: w weights,
  g gradients, o optimizer state incl. the fp32 master copy):

      level  weights  grads  optimizer  dp collectives per step (bytes)
      0      P·w      P·g    P·o        all-reduce(P·g)
      1      P·w      P·g    P·o / N    all-reduce(P·g) + all-gather(P·w) of the updated shard
      2      P·w      P·g/N  P·o / N    reduce-scatter(P·g) + all-gather(P·w)
      3      P·w/N    P·g/N  P·o / N    all-gather(P·w) in forward and again in backward,
                                        reduce-scatter(P·g)

  Gradient collectives are bucketed and overlap the backward of the blocks before it (the
  block's own backward time hides them). Level 3's all-gathers are prefetched as the
  generated program runs them: block i+1's gathers run while block i computes in forward,
  block i-1's while block i computes in backward (i, i+1 at level 3), so a gather's
  exposed time depends on the neighbour's compute: max(0, gather(i+1) - forward(i)) +
  max(0, gather_bwd(i) - backward(i+1)) per pair of consecutive blocks
  (`prefetch_exposed_s`, an edge cost of the integer program; a neighbour at another level
  leaves an earlier level-3 block to start them). The first block's forward
  gathers start when it reads them (exposed); the last level-3 block's backward reads the
  weights its forward still holds (no gather). The
  program holds two blocks' gathered weights at a time (the running one and the prefetched
  one) and, at levels 2-3, up to GRAD_BUCKETS_HELD gradient buckets of whole gradients (one
  filling, the others' reduce-scatters in flight): `search.workspace_bytes` counts both.
  The all-gather of the updated shard at levels 1 and 2 runs after the optimizer step,
  before the next forward reads the weights: it is exposed. An overlapped collective still
  slows the compute beside it (its kernels take SMs and memory bandwidth): OVERLAP_SLOWDOWN
  of its time is added to the step, so a plan that moves fewer bytes wins a tie. The level
  only matters with dp > 1, so dp = 1 offers level 0 alone.

- `recompute`: 1 keeps only the block's input for backward and re-runs its forward (compute
  and forward collectives once more) inside the backward; 0 keeps every activation the
  backward reads. Offered for attention, MLP and MoE blocks (the rest store little).

Backward costs 2× the forward compute. Each forward collective of the strategy has a
transpose in backward (all-reduce ↔ all-reduce, all-gather ↔ reduce-scatter, all-to-all ↔
all-to-all) unless the strategy declares otherwise (`Collective.backward`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from cost_models import OverlapStage, exposed_comm_seconds
from ir.graph import Block
from passes.parallelize.context import PlanContext

BACKWARD_FACTOR = 2.0
OVERLAP_SLOWDOWN = 0.1
# The generated program's gradient buckets: its default --bucket-mb, and how many buckets of
# whole gradients it holds at levels 2-3 (one filling, SCATTER_IN_FLIGHT = 2 reduce-scatters
# in flight; tests/test_training_plan.py holds the program to these).
GRAD_BUCKET_BYTES = 25 * 2**20
GRAD_BUCKETS_HELD = 3
RECOMPUTE_KINDS = frozenset({"attention", "mlp", "moe"})
TRANSPOSE = {
    "all_reduce": "all_reduce",
    "all_gather": "reduce_scatter",
    "reduce_scatter": "all_gather",
    "all_to_all": "all_to_all",
}


def training_options(block: Block, ctx: PlanContext) -> list[dict[str, int]]:
    """The (zero, recompute) choices of a block in a training plan."""
    wl = ctx.workload
    has_params = block.param_count > 0
    levels = wl.zero_levels if has_params and ctx.mesh.size("dp") > 1 else (min(wl.zero_levels),)
    if block.kind in RECOMPUTE_KINDS:
        recompute = {"auto": (0, 1), "none": (0,), "full": (1,)}[wl.recompute]
    else:
        recompute = (0,)
    return [{"zero": z, "recompute": r} for z in levels for r in recompute]


def sharded_state_bytes(
    params: float, ctx: PlanContext, zero: int
) -> dict[str, float]:
    """Weights, gradients and optimizer state of `params` parameters at sharding level
    `zero` over the dp axis (see the module docstring)."""
    from cost_models import optimizer_state_bytes

    n = ctx.mesh.size("dp")
    w = ctx.weight_bytes
    optimizer = optimizer_state_bytes(
        int(round(params)), ctx.workload.optimizer, ctx.workload.weight_dtype
    )
    return {
        "weights": params * w / (n if zero >= 3 else 1),
        "gradients": params * w / (n if zero >= 2 else 1),
        "optimizer": optimizer / (n if zero >= 1 else 1),
    }


def dp_collectives(params: float, ctx: PlanContext, zero: int) -> dict[str, tuple[float, str]]:
    """Seconds of the dp-axis collectives of one step at level `zero`, keyed by name, with
    the phase whose compute hides them ("forward" or "backward"; "step": none, exposed;
    "prefetch_forward" / "prefetch_backward": a neighbour block's, see `prefetch_exposed_s`);
    on a cp mesh also the gradients' all-reduce over cp (cp acts like dp for the weights)."""
    w = ctx.weight_bytes
    nbytes = params * w
    out: dict[str, tuple[float, str]] = {}

    def add(name: str, kind: str, phase: str, times: int = 1) -> None:
        seconds = times * ctx.collective_s(kind, nbytes, "dp")
        if seconds:
            out[name] = (seconds, phase)

    if zero <= 1:
        add("all_reduce:grads", "all_reduce", "backward")
    else:
        add("reduce_scatter:grads", "reduce_scatter", "backward")
    if zero in (1, 2):
        add("all_gather:params", "all_gather", "step")
    if zero == 3:
        add("all_gather:params", "all_gather", "prefetch_forward")
        add("all_gather:params_bwd", "all_gather", "prefetch_backward")
    if ctx.mesh.size("cp") > 1:  # every rank of a cp ring holds the weights whole, fed other tokens
        seconds = ctx.collective_s("all_reduce", nbytes, "cp")
        if seconds:
            out["all_reduce:grads_cp"] = (seconds, "backward")
    return out


@dataclass(frozen=True)
class DpTraffic:
    """A block's collectives of one step over dp (and the model axes' gradient all-reduce),
    by how the program overlaps them: `exposed_s` on the critical path from the block alone,
    `slowdown_s` the compute they slow (OVERLAP_SLOWDOWN of everything overlapped),
    `prefetch_s` the level-3 all-gathers (forward, backward) a neighbour block hides."""

    seconds: dict[str, float]
    exposed_s: float
    slowdown_s: float
    prefetch_s: tuple[float, float]
    spare_s: tuple[float, float]  # forward, backward compute not busy hiding the above


def dp_traffic(
    params: float, ctx: PlanContext, zero: int, *, forward: float, backward: float,
    backward_extra: dict[str, float] | None = None,
) -> DpTraffic:
    """`dp_collectives` of `params` at level `zero` (plus `backward_extra`, collectives hidden
    by the backward), each overlapped as the program runs it: gradient reductions behind the
    block's own backward, the updated shard's all-gather exposed, level-3 gathers behind the
    neighbour block (left to `prefetch_exposed_s`)."""
    by_phase = {"forward": 0.0, "backward": 0.0, "step": 0.0, "prefetch_forward": 0.0, "prefetch_backward": 0.0}
    seconds: dict[str, float] = {}
    for name, (s, phase) in dp_collectives(params, ctx, zero).items():
        seconds[name] = s
        by_phase[phase] += s
    for name, s in (backward_extra or {}).items():
        seconds[name] = s
        by_phase["backward"] += s
    spare = (max(0.0, forward - by_phase["forward"]), max(0.0, backward - by_phase["backward"]))
    exposed = by_phase["step"] + exposed_comm_seconds([
        OverlapStage(comm_s=by_phase["forward"], overlappable_compute_s=forward),
        OverlapStage(comm_s=by_phase["backward"], overlappable_compute_s=backward),
    ])
    overlapped = sum(v for k, v in by_phase.items() if k != "step")
    return DpTraffic(
        seconds, exposed, OVERLAP_SLOWDOWN * overlapped,
        (by_phase["prefetch_forward"], by_phase["prefetch_backward"]), spare,
    )


class BlockPass(NamedTuple):
    """What prefetch pricing needs of one block's option: its spare forward and backward
    compute seconds (compute not already hiding the block's own collectives: one stream
    runs the collectives) and its level-3 all-gathers (forward, backward; zero when not at
    level 3)."""

    spare_forward_s: float
    spare_backward_s: float
    gathers: tuple[float, float]


def prefetch_exposed_s(before: BlockPass, after: BlockPass) -> float:
    """Exposed level-3 gather time between two consecutive blocks (`before` runs first in
    forward). The program starts a level-3 block's gathers when the level-3 block before it
    starts. When `before` is at level 3, the later block's forward gathers run while it
    computes forward (in its spare compute); otherwise an earlier level-3 block started them, at least one block
    like `after` back where layers repeat: they hide behind both blocks' compute (a lower
    bound; the first level-3 block, gathered on demand, is priced so too). Backward mirrors
    it: when `after` is at level 3 it hides the earlier block's backward gathers, otherwise
    both blocks' backward does."""
    exposed = 0.0
    gather = after.gathers[0]
    if gather:
        hiding = before.spare_forward_s + (0.0 if before.gathers[0] else after.spare_forward_s)
        exposed += max(0.0, gather - hiding)
    gather = before.gathers[1]
    if gather:
        hiding = after.spare_backward_s + (0.0 if after.gathers[1] else before.spare_backward_s)
        exposed += max(0.0, gather - hiding)
    return exposed
