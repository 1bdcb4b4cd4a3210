"""What a lowered program communicates, against what its plan priced (for
tests/test_priced_collectives.py).

A collective is named by (kind, axes) as the cost model's breakdown keys name it: kind one of
all_reduce, all_gather, reduce_scatter, all_to_all, send_recv; axes the mesh axes of size > 1
joined by `×` (`kvp×tp`). The program's joined model group `kvp_tp` is `kvp×tp`.

Where the program communicates:
* `Collective` steps of a block or an edge;
* runtime kernels that communicate inside (`RUNTIME_COLLECTIVES`: ring attention's send/recv
  and pass-Q's all-to-all over cp, `moe_dispatch`'s all-to-all over its group).

Where the plan prices it:
* a block's `comm_s` keys `kind:axes[:what]`; in training also the backward's (the forward
  collective's transpose; `:cp_backward` for the ring's) and the gradient / parameter
  collectives (`all_reduce:grads`, `all_gather:params`, `all_reduce:grads_tp`, ...), which the
  training driver runs after the blocks and which are not compared here;
* an edge (the residual stream changing layout between two blocks) by
  `passes.parallelize.layouts.reshard_kind(previous block's layout_out, next block's
  layout_in)` over the model axes.

"Matches" means, per block and per edge:
* inference: the set the program runs equals the set priced;
* training: every collective the forward runs is priced, and every priced model-axis
  collective is one the forward runs or the transpose of one (the backward runs through
  autograd and is not visible as steps).
A collective priced at 0 s (0 bytes, or a group of 1) is absent from `comm_s`; such a
collective never appears in a program either (a size-1 axis is not lowered)."""

from __future__ import annotations

import math

from ir.plan import BlockPlan, Plan
from ir.rank_program import BlockProgram, Collective, Compute, EdgeProgram, RankProgram
from passes.lower.builder import JOINED_MODEL_AXIS
from passes.parallelize.layouts import reshard_kind
from passes.parallelize.training import TRANSPOSE

Named = tuple[str, str]

# Runtime kernels (codegen/templates/_runtime*.py.jinja) that communicate inside, and what they
# run: a function of the step.
RUNTIME_COLLECTIVES = {
    "ring_attention_pass_kv": lambda step: {("send_recv", "cp")},
    "ring_attention_pass_q": lambda step: {("send_recv", "cp"), ("all_to_all", "cp")},
    "moe_dispatch": lambda step: {("all_to_all", axes_name(step.kwargs["group"]))},
}
# Runtime code that communicates but is no block kernel: the collective wrappers the
# `Collective` steps render to and their autograd forms, the ring kernels' autograd forms and
# their send/recv primitive, and the driver's gather of sharded outputs (`to_global`).
RUNTIME_NOT_KERNELS = frozenset({
    "Collectives", "AllReduceSum", "AllGather", "ReduceScatter", "AllToAll", "AllToAllRows",
    "RingAttentionPassKV", "RingAttentionPassQ", "ring_shift", "to_global",
})
# Training: a block whose weights held whole over the model axes are under this share of its
# weights (biases of row-parallel projections) may leave their gradient all-reduce unpriced.
SMALL_SHARE = 0.01
# comm_s keys whose second part is no mesh group: gradients and parameters of training
STATE_KEYS = frozenset({"grads", "params", "params_bwd", "grads_tp", "grads_cp"})


def axes_name(axis: str) -> str:
    return "kvp×tp" if axis == JOINED_MODEL_AXIS else axis


def run_by(item: BlockProgram | EdgeProgram) -> set[Named]:
    """The collectives a block or edge of the program runs."""
    out: set[Named] = set()
    for step in item.steps:
        if isinstance(step, Collective):
            out.add((step.kind, axes_name(step.axis)))
        elif isinstance(step, Compute) and step.target in RUNTIME_COLLECTIVES:
            out |= RUNTIME_COLLECTIVES[step.target](step)
    return out


def priced_by(bp: BlockPlan) -> tuple[set[Named], set[Named]]:
    """(forward-or-transposed model-axis collectives, backward-only ones) the block's
    `comm_s` prices; state keys left out."""
    priced: set[Named] = set()
    backward: set[Named] = set()
    for key, seconds in bp.comm_s.items():
        kind, axes = key.split(":")[:2]
        if axes in STATE_KEYS or not seconds:
            continue
        if axes.endswith("_backward"):
            backward.add((kind, axes.removesuffix("_backward")))
        else:
            priced.add((kind, axes))
    return priced, backward


def edge_priced(plan: Plan, before: BlockPlan | None, after: BlockPlan) -> set[Named]:
    if before is None:
        return set()
    kind = reshard_kind(before.layout_out, after.layout_in)
    model = "×".join(a for a in ("kvp", "tp") if plan.mesh.get(a, 1) > 1)
    return {(kind, model)} if kind and model else set()


def gradient_reductions(program: RankProgram) -> dict[str, tuple[set[str], float]]:
    """Training, per block: the mesh axes (besides dp) over which the driver all-reduces the
    gradients of the weights the block is the first to read — every axis of size > 1 on
    which a weight is held whole (`replicated_axes` in codegen's training template) — and
    the share of the block's weights (by element count) so reduced."""
    weights = {w.key: w for w in program.weights}
    seen: set[str] = set()
    out: dict[str, tuple[set[str], float]] = {}
    for block in program.blocks:
        axes: set[str] = set()
        whole = total = 0
        for use in block.params:
            shard = weights[use.key]
            if shard.buffer or shard.param in seen:
                continue
            seen.add(shard.param)
            size = math.prod(shard.shape)
            total += size
            held = {a for a in program.axes if a != "dp" and program.mesh.get(a, 1) > 1
                    and not shard.layout.on(a).is_shard}
            if held:
                axes |= held
                whole += size
        out[block.name] = (axes, whole / total if total else 0.0)
    return out


def priced_gradient_axes(plan: Plan, bp: BlockPlan) -> set[str]:
    axes: set[str] = set()
    if bp.comm_s.get("all_reduce:grads_tp"):
        axes |= {a for a in ("kvp", "tp") if plan.mesh.get(a, 1) > 1}
    if bp.comm_s.get("all_reduce:grads_cp"):
        axes.add("cp")
    return axes


def loss_collectives(program: RankProgram) -> dict[str, set[Named]]:
    """Training: `cross_entropy_sum` all-gathers the loss statistics over the axes that split
    the logits' vocabulary (codegen's training template), attributed to the block that
    produces the logits."""
    for out in program.outputs:
        if out.role != "logits":
            continue
        layout = program.values[out.local].layout
        vocab = [a for a in ("kvp", "tp") if a in program.axes and layout.on(a).is_shard and layout.on(a).dim not in (0, 1)]
        producer = next(b.name for b in program.blocks if out.local in b.outputs)
        return {producer: {("all_gather", "×".join(vocab))}} if vocab else {}
    return {}


def mismatches(plan: Plan, program: RankProgram, *, gradients: bool = False) -> list[str]:
    """One line per block or edge whose collectives and prices disagree (module docstring);
    with `gradients`, training blocks' gradient all-reduces over the model axes and cp too."""
    train = plan.workload["kind"] == "train"
    driver = loss_collectives(program) if train else {}
    reductions = gradient_reductions(program) if train else {}
    lines: list[str] = []
    previous: BlockPlan | None = None
    for item in program.items:
        ran = run_by(item)
        if isinstance(item, BlockProgram):
            ran |= driver.get(item.name, set())
        if isinstance(item, EdgeProgram):
            after = plan.block(item.before_block)
            priced = edge_priced(plan, previous, after)
            if train:
                priced |= {(TRANSPOSE[k], a) for k, a in priced}
                ok = ran <= priced
            else:
                ok = ran == priced
            if not ok:
                lines.append(f"edge before {item.before_block}: runs {sorted(ran)}, priced {sorted(priced)}")
            continue
        bp = plan.block(item.name)
        priced, backward = priced_by(bp)
        if train:
            transposed = ran | {(TRANSPOSE.get(k, k), a) for k, a in ran}
            ok = ran <= priced and priced <= transposed and backward <= ran
        else:
            ok = ran == priced and not backward
        if not ok:
            lines.append(f"block {item.name} ({bp.strategy}): runs {sorted(ran)}, priced {sorted(priced | backward)}")
        if train and gradients:
            reduced, share = reductions[item.name]
            priced_axes = priced_gradient_axes(plan, bp)
            if reduced != priced_axes and (share >= SMALL_SHARE or priced_axes):
                lines.append(f"block {item.name} ({bp.strategy}): gradients of {share:.1%} of its weights "
                             f"all-reduced over {sorted(reduced)}, priced over {sorted(priced_axes)}")
        previous = bp
    return lines
