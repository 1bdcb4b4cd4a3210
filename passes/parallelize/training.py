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

  Gradient collectives are bucketed per block and overlap the backward of the blocks before
  it (the block's own backward time hides them); level 3's all-gathers are prefetched and
  overlap the forward / backward compute. (The generated program buckets and overlaps the
  gradient collectives; its level-3 all-gathers run where a block needs the weight, not
  prefetched, and it holds at most one block's gathered weights, within the two-block
  workspace `search.workspace_bytes` prices.) The all-gather of the updated shard at levels 1
  and 2 runs after the optimizer step, before the next forward reads the weights: it is
  exposed. An overlapped collective still slows the compute beside it (its kernels take
  SMs and memory bandwidth): OVERLAP_SLOWDOWN of its time is added to the step, so a plan
  that moves fewer bytes wins a tie. The level only matters with dp > 1, so dp = 1 offers
  level 0 alone.

- `recompute`: 1 keeps only the block's input for backward and re-runs its forward (compute
  and forward collectives once more) inside the backward; 0 keeps every activation the
  backward reads. Offered for attention, MLP and MoE blocks (the rest store little).

Backward costs 2× the forward compute. Each forward collective of the strategy has a
transpose in backward (all-reduce ↔ all-reduce, all-gather ↔ reduce-scatter, all-to-all ↔
all-to-all) unless the strategy declares otherwise (`Collective.backward`).
"""

from __future__ import annotations

from ir.graph import Block
from passes.parallelize.context import PlanContext

BACKWARD_FACTOR = 2.0
OVERLAP_SLOWDOWN = 0.1
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
    the phase whose compute hides them ("forward" or "backward"; "step": none, exposed); on a
    cp mesh also the gradients' all-reduce over cp (cp acts like dp for the weights)."""
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
        add("all_gather:params", "all_gather", "forward")
        add("all_gather:params_bwd", "all_gather", "backward")
    if ctx.mesh.size("cp") > 1:  # every rank of a cp ring holds the weights whole, fed other tokens
        seconds = ctx.collective_s("all_reduce", nbytes, "cp")
        if seconds:
            out["all_reduce:grads_cp"] = (seconds, "backward")
    return out
