r"""The integer program that picks one parallel strategy per block.

The problem
-----------
Blocks b (a layer's attention, its FFN, ...) each have candidate options s with a time
t[b,s] (seconds), a per-GPU memory m[b,s] (bytes) and the activation layouts they consume and
produce. A dataflow edge e = (b -> c) (residual-stream and skip edges included) costs
r_e(s, t) >= 0 seconds of resharding when b uses s and c uses t. Every plan also needs F
fixed bytes per GPU; the GPU holds M bytes; an optional budget T bounds the time. Choose one
option s_b per block to

    minimize    sum_b t[b,s_b] + sum_{e=(b->c)} r_e(s_b, s_c)
    subject to  F + sum_b m[b,s_b] <= M                              (memory capacity)
                sum_b t[b,s_b] + sum_e r_e(s_b, s_c) <= T            (time budget, if given)

Decision units
--------------
With `share_groups`, all blocks of a group (identical repeated layers) take one option, so a
decision unit u is a group; otherwise it is a block. For unit u with member blocks B_u:

    c[u,s] = sum_{b in B_u} t[b,s]  (+ the linear edge terms below)
    w[u,s] = sum_{b in B_u} m[b,s]

Edge costs are summed per unordered unit pair {u, v} into one matrix R_uv[s,t] (a v -> u
edge enters transposed), so 126 layers in two groups leave one or two matrices. An edge
between two blocks of one group costs R[s,s]: linear, added to c[u,s]. A matrix whose rows
are all equal (or whose columns are) depends on one side only and is folded into c as well.
The remaining matrices are the couplings p = (u, v).

Layout classes: options of u with identical rows of R_p form a row class a; options of v
with identical columns form a column class g; R_p is then constant on class pairs, R_p[a,g].
When resharding depends only on (layout_out, layout_in) there are at most as many classes as
layouts, which is what keeps the edge part small.

The integer program
-------------------
    x[u,s] in {0,1}     unit u uses option s
    z[p,a,g] in [0,1]   coupling p has its row class a and column class g
                        (binary for CP-SAT; continuous for MIP backends, see below)

    minimize  sum_{u,s} c[u,s] x[u,s] + sum_p sum_{a,g} R_p[a,g] z[p,a,g]
    s.t.  one option per block:  sum_s x[u,s] = 1                             for all u
          edge linearization:    sum_g z[p,a,g] = sum_{s in a} x[u,s]          for all p, a
                                 sum_a z[p,a,g] = sum_{t in g} x[v,t]          for all p, g
          memory capacity:       sum_{u,s} w[u,s] x[u,s] <= M - F
          time budget:           (the objective) <= T
          symmetry breaking:     sum_{s in E, s >= e_k} x[u,s] + sum_{s in E, s < e_k} x[v,s] <= 1
                                 for consecutive twins u < v, edge class E, k >= 1
          no-good cut (k-th runner-up):  sum_u x[u, s_u^(j)] <= |U| - 1   for each plan j found

Symmetry breaking: without shared groups, 32 identical layers with 8 (zero level,
recompute) options each are a knapsack with 32! equivalent orderings of every plan, which
CP-SAT cannot close in minutes. Units u, v are twins when they have the same options, costs,
memories and edge classes E (options no edge cost tells apart: the same layout class in
every coupling). Trading two options of one class between twins changes no cost, so every
plan has a twin-sorted copy of equal time and memory: among consecutive twins that both
pick from class E (options e_0 < e_1 < ...), the first picks the lower index. Only those
copies stay feasible (`Problem.break_symmetry`, on by default); the optimum is unchanged,
hints are sorted the same way, and runner-ups are plans that differ from better ones by
more than a reordering of twins.

Why the edge linearization is exact: for integral x both marginals of z[p] are one-hot, and
the only nonnegative matrix with one-hot row and column sums is their outer product, so
z[p,a,g] = [class(s_u) = a] * [class(s_v) = g] without any integrality on z. It is also
tight where the textbook form y >= x[u,s] + x[v,t] - 1, y >= 0 is not: that form's LP
relaxation is 0 at x = 1/|S|, leaving the solver no bound from resharding, while here the LP
pays at least the cheapest transport between the fractional marginals. Per coupling it uses
|A|*|G| variables and |A|+|G| rows instead of |S_u|*|S_v| of each. Because z is an exact
product, the time-budget row is exact too and costs may have any sign.

Numbers
-------
Floats become integers here and nowhere else. CP-SAT takes integer coefficients:
  * time: one step is tau = U_T / 1e9 seconds, where U_T = sum_u max_s c[u,s] + sum_p max R_p
    bounds the time of every plan; coefficients are round(c / tau). A plan has n = |U| + |P|
    active terms, each off by <= tau/2, so the plan returned is optimal within n * tau =
    n * 1e-9 * U_T seconds, and the time budget holds within n * tau / 2.
  * memory is exact: bytes are multiplied by 2^k for the smallest k (k = 0 for whole bytes)
    that makes every w[u,s] integral while the total stays below 2^53; the limit M - F is
    rounded down. Where no such k exists coefficients are rounded up, so the integer model
    never admits a plan over capacity.
MIP backends (SCIP, HiGHS) take the same time coefficients unrounded and the memory row
divided by M - F, with feasibility tolerances of 1e-9 (capacity honoured within
1e-9 * (M - F) bytes). The objective and memory reported are recomputed in float from the
chosen options; OPTIMAL means proven optimal for the model above.

Time limit: a run cut short returns the best feasible plan it holds (status FEASIBLE) with
gap = (objective - bound) / objective, the bound being the best lower bound the solver
proved (0 when it proved none); when the solver held no plan yet, the greedy warm start is
returned if it fits. OPTIMAL always carries gap 0.

Backends and determinism
------------------------
"cpsat" (one worker, fixed seed, linearization_level 2), "scip" and "highs" (through
MathOpt; single-threaded where the solver takes it, fixed seed, zero gap tolerance;
pywraplp's HiGHS crashes on solution hints). Units and options keep the order of the
Problem, so the same Problem gives the same model and, with these deterministic searches, the
same assignment on every run (a solve cut short by the wall-clock limit may stop at another
incumbent on a slower machine).

"auto" uses CP-SAT throughout. The group-shared problem is tiny (one unit per group) and is
proven in ~0.03 s. Without sharing, "auto" solves the shared problem first and passes that
plan (feasible for the per-block problem, so the result is never worse) as the hint of the
per-block solve; otherwise the hint is the caller's or the greedy plan (`greedy_assignment`).
Measured on 126 blocks x 12 options (2 or 3 groups, chain plus residual edges, 32 instances
from memory-slack to tight; one core of a loaded 2-core machine, 60 s limit): CP-SAT at
linearization_level 2 proved 31 of 32, median 0.3 s, worst 15 s; SCIP proved the same 31,
median 0.5 s, worst 41 s; HiGHS proved 28, median 0.4 s, worst 31 s, and stopped without
proof on three tight cases CP-SAT closed in 0.5-15 s. CP-SAT at its single-worker default
(linearization_level 1) did not prove even the memory-slack case in 60 s (gap 2%), which is
why level 2 is set. A tight cap makes the per-block problem a multiple-choice knapsack over
many near-identical layers; that, not the edges, is what can leave a gap at the limit.

Where the code lives: this module holds the data, the greedy hint and `solve`;
`ilp_backends` reduces the problem, scales it and builds the program above one constraint
family per method; `ilp_diagnostics` words the infeasibility errors and runner-up reasons.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ir.errors import InfeasiblePlanError
from passes.parallelize.ilp_backends import (
    _Formulation,
    _option_names,
    _reduce,
    _Reduced,
)
from passes.parallelize.ilp_diagnostics import (
    _check_simple_bounds,
    _runner_up_reason,
    _time_budget_error,
)
from passes.parallelize.ilp_solvers import BACKENDS, Backend

__all__ = [
    "BACKENDS",
    "Alternative",
    "Backend",
    "BlockVars",
    "Edge",
    "Option",
    "OptionChange",
    "Problem",
    "Solution",
    "Status",
    "greedy_assignment",
    "plan_memory_bytes",
    "plan_time_s",
    "solve",
]

Status = Literal["OPTIMAL", "FEASIBLE"]

_AUTO_SHARED_BACKEND = "cpsat"
_AUTO_PER_BLOCK_BACKEND = "cpsat"


# ---------------------------------------------------------------------------------------
# The problem as data
# ---------------------------------------------------------------------------------------


def _require_finite_nonnegative(value: float, what: str | Callable[[], str]) -> None:
    """`what` names the number; a callable builds the name only when the check fails (edges
    check every option pair's cost, and formatting each name cost more than the check)."""
    if not (math.isfinite(value) and value >= 0):
        name = what() if callable(what) else what
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Option:
    """One candidate strategy for a block: its time, per-GPU memory and activation layouts."""

    name: str
    time_s: float
    memory_bytes: float
    layout_in: str
    layout_out: str

    def __post_init__(self) -> None:
        _require_finite_nonnegative(self.time_s, f"option {self.name!r} time_s")
        _require_finite_nonnegative(self.memory_bytes, f"option {self.name!r} memory_bytes")


@dataclass(frozen=True, kw_only=True)
class BlockVars:
    """A block instance (`layers.3.attention`); blocks of one group share an option list."""

    name: str
    group: str
    options: tuple[Option, ...]

    def __post_init__(self) -> None:
        names = [option.name for option in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"block {self.name!r} lists an option name twice: {names}")


@dataclass(frozen=True, kw_only=True)
class Edge:
    """Dataflow src -> dst; cost_s[(src option, dst option)] is the resharding time (0 if absent)."""

    src: str
    dst: str
    cost_s: Mapping[tuple[str, str], float]

    def __post_init__(self) -> None:
        if self.src == self.dst:
            raise ValueError(f"edge from block {self.src!r} to itself")
        for pair, cost in self.cost_s.items():
            _require_finite_nonnegative(cost, lambda pair=pair: f"edge {self.src}->{self.dst} cost_s[{pair}]")

    @classmethod
    def from_layouts(
        cls,
        src: BlockVars,
        dst: BlockVars,
        reshard_seconds: Callable[[str, str], float],
    ) -> Edge:
        """The edge whose cost is `reshard_seconds(src layout_out, dst layout_in)` per pair."""
        cost_s = {}
        for s in src.options:
            for t in dst.options:
                seconds = reshard_seconds(s.layout_out, t.layout_in)
                if seconds != 0:
                    cost_s[(s.name, t.name)] = seconds
        return cls(src=src.name, dst=dst.name, cost_s=cost_s)


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Blocks, edges and limits; see the module docstring for the program they define."""

    blocks: tuple[BlockVars, ...]
    edges: tuple[Edge, ...]
    memory_capacity_bytes: float
    fixed_memory_bytes: float = 0.0
    time_budget_s: float | None = None
    share_groups: bool = True
    break_symmetry: bool = True

    def __post_init__(self) -> None:
        _require_finite_nonnegative(self.memory_capacity_bytes, "memory_capacity_bytes")
        _require_finite_nonnegative(self.fixed_memory_bytes, "fixed_memory_bytes")
        if self.time_budget_s is not None:
            _require_finite_nonnegative(self.time_budget_s, "time_budget_s")
        blocks = {block.name: block for block in self.blocks}
        if len(blocks) != len(self.blocks):
            raise ValueError("two blocks have the same name")
        first_of_group: dict[str, BlockVars] = {}
        for block in self.blocks:
            first = first_of_group.setdefault(block.group, block)
            if first.options is block.options:
                continue
            if self.share_groups and _option_names(first) != _option_names(block):
                raise ValueError(
                    f"blocks {first.name!r} and {block.name!r} share group {block.group!r} "
                    "but list different options; a shared group needs one option list"
                )
        names_of: dict[int, set[str]] = {}  # by option tuple: shared groups share one
        for edge in self.edges:
            for end in (edge.src, edge.dst):
                if end not in blocks:
                    raise ValueError(f"edge {edge.src}->{edge.dst} names unknown block {end!r}")
            src_opts, dst_opts = blocks[edge.src].options, blocks[edge.dst].options
            src_names = names_of.setdefault(id(src_opts), {o.name for o in src_opts})
            dst_names = names_of.setdefault(id(dst_opts), {o.name for o in dst_opts})
            for s, t in edge.cost_s:
                if s not in src_names or t not in dst_names:
                    raise ValueError(f"edge {edge.src}->{edge.dst} prices unknown pair {(s, t)}")


@dataclass(frozen=True, kw_only=True)
class OptionChange:
    """A decision unit (group or block) whose option differs from the optimum's."""

    unit: str
    num_blocks: int
    optimum_option: str
    option: str


@dataclass(frozen=True, kw_only=True)
class Alternative:
    """A runner-up plan: the best one left once all better plans found are cut off."""

    rank: int
    assignment: dict[str, str]
    objective_s: float
    memory_bytes: float
    status: Status
    changes: tuple[OptionChange, ...]
    reason: str


@dataclass(frozen=True, kw_only=True)
class Solution:
    """The chosen option per block, its time and memory, and how the solve went."""

    assignment: dict[str, str]
    objective_s: float
    memory_bytes: float
    status: Status
    gap: float
    backend: str
    solve_seconds: float
    num_variables: int
    num_constraints: int
    alternatives: tuple[Alternative, ...]


def plan_time_s(problem: Problem, assignment: Mapping[str, str]) -> float:
    """Block times plus resharding on every edge, in float, for a full assignment."""
    options = _options_by_block(problem)
    total = sum(options[block.name][assignment[block.name]].time_s for block in problem.blocks)
    for edge in problem.edges:
        total += edge.cost_s.get((assignment[edge.src], assignment[edge.dst]), 0.0)
    return total


def plan_memory_bytes(problem: Problem, assignment: Mapping[str, str]) -> float:
    """Fixed memory plus every block's chosen option, per GPU."""
    options = _options_by_block(problem)
    chosen = (options[block.name][assignment[block.name]] for block in problem.blocks)
    return problem.fixed_memory_bytes + sum(option.memory_bytes for option in chosen)


def _fits(problem: Problem, assignment: Mapping[str, str]) -> bool:
    """The assignment honours the memory capacity and, when set, the time budget."""
    if plan_memory_bytes(problem, assignment) > problem.memory_capacity_bytes * (1 + 1e-9):
        return False
    budget = problem.time_budget_s
    return budget is None or plan_time_s(problem, assignment) <= budget * (1 + 1e-9)


def _options_by_block(problem: Problem) -> dict[str, dict[str, Option]]:
    return {b.name: {o.name: o for o in b.options} for b in problem.blocks}


# ---------------------------------------------------------------------------------------
# Greedy plan (the hint)
# ---------------------------------------------------------------------------------------


def greedy_assignment(problem: Problem) -> dict[str, str]:
    """Cheapest-time option per unit, then repaired until it fits memory.

    Repair switches, one at a time, the unit whose move to a smaller option saves the most
    memory per second of time added (moves that add no time first). It stops when the plan
    fits or no move saves memory, so the result may still be over capacity when no plan fits.
    """
    reduced = _reduce(problem)
    return reduced.assignment(_greedy_choice(reduced))


def _greedy_choice(reduced: _Reduced) -> list[int]:
    units = reduced.units
    choice = [
        min(range(len(u.cost_s)), key=lambda s, u=u: (u.cost_s[s], u.memory_bytes[s]))
        for u in units
    ]
    excess = (
        sum(u.memory_bytes[choice[i]] for i, u in enumerate(units)) - reduced.memory_limit_bytes
    )

    def best_move(u: int) -> tuple[tuple[float, float], int] | None:
        unit, current = units[u], choice[u]
        moves = []
        for s in range(len(unit.cost_s)):
            saved = unit.memory_bytes[current] - unit.memory_bytes[s]
            if saved > 0:
                added = unit.cost_s[s] - unit.cost_s[current]
                moves.append(((saved / added if added > 0 else math.inf, saved), s))
        return max(moves, key=lambda move: move[0]) if moves else None

    moves = [best_move(u) for u in range(len(units))]
    while excess > 0:
        candidates = [(move[0], u) for u, move in enumerate(moves) if move is not None]
        if not candidates:
            break
        _, u = max(candidates, key=lambda candidate: candidate[0])
        target = moves[u][1]  # type: ignore[index]
        excess -= units[u].memory_bytes[choice[u]] - units[u].memory_bytes[target]
        choice[u] = target
        moves[u] = best_move(u)
    return choice


def _choice_from_hint(reduced: _Reduced, hint: Mapping[str, str]) -> list[int]:
    """The unit choice a (possibly partial) block hint asks for; greedy where it is silent."""
    choice = _greedy_choice(reduced)
    given: dict[int, str] = {}
    for block, option in hint.items():
        if block not in reduced.unit_of_block:
            raise ValueError(f"hint names unknown block {block!r}")
        u = reduced.unit_of_block[block]
        unit = reduced.units[u]
        if option not in unit.option_names:
            raise ValueError(f"hint gives block {block!r} unknown option {option!r}")
        if given.setdefault(u, option) != option:
            raise ValueError(
                f"hint gives group {unit.name!r} two options: {given[u]!r} and {option!r}"
            )
        choice[u] = unit.option_names.index(option)
    return choice


# ---------------------------------------------------------------------------------------
# solve(): checks, the solve, read-back, runner-ups
# ---------------------------------------------------------------------------------------


def solve(
    problem: Problem,
    *,
    time_limit_s: float = 60.0,
    backend: Backend = "auto",
    hint: Mapping[str, str] | None = None,
    top_k: int = 3,
) -> Solution:
    """The fastest plan that fits memory (and the time budget), plus up to top_k - 1 runner-ups.

    `time_limit_s` bounds each solver run: the main solve, each runner-up and, for "auto"
    without shared groups, the shared pre-solve. `hint` (block -> option, may be partial)
    replaces the greedy / shared warm start. Raises InfeasiblePlanError with the numbers of
    the binding constraint when no plan exists.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not (time_limit_s > 0 and top_k >= 1):
        raise ValueError(f"need time_limit_s > 0 and top_k >= 1, got {time_limit_s}, {top_k}")
    started = time.perf_counter()
    _check_simple_bounds(problem)
    reduced = _reduce(problem)
    hint_choice = _choice_from_hint(reduced, hint) if hint else _greedy_choice(reduced)

    label = backend_name = backend
    shared: Solution | None = None
    if backend == "auto":
        backend_name = _AUTO_SHARED_BACKEND if problem.share_groups else _AUTO_PER_BLOCK_BACKEND
        label = f"auto: {backend_name}"
        if not problem.share_groups:
            shared = _solve_shared_or_none(problem, time_limit_s)
            if shared is not None and hint is None:
                hint_choice = _choice_from_hint(reduced, shared.assignment)
            label = f"auto: {_AUTO_SHARED_BACKEND} shared plan as warm start for {backend_name}"

    formulation = _Formulation(reduced, backend_name)
    outcome, choice = formulation.solve(time_limit_s, hint_choice)
    if outcome.status == "INFEASIBLE":
        raise _explain_time_budget(problem, reduced, backend_name, time_limit_s)
    status: Status = "OPTIMAL" if outcome.status == "OPTIMAL" else "FEASIBLE"
    objective_s = math.inf if choice is None else plan_time_s(problem, reduced.assignment(choice))
    if shared is not None and shared.objective_s < objective_s:
        # At least as good as whatever the per-block search proved, so the status stands.
        choice, objective_s = _choice_from_hint(reduced, shared.assignment), shared.objective_s
        if status != "OPTIMAL":
            label += " (kept the shared plan: the per-block search did not beat it in time)"
    if choice is None and _fits(problem, reduced.assignment(hint_choice)):
        # The limit ran out before the solver held any plan of its own: the warm start fits,
        # so it is the best feasible plan known, with whatever bound the solver proved.
        choice = hint_choice
        objective_s = plan_time_s(problem, reduced.assignment(choice))
        label += " (time limit hit before the solver found a plan: the warm start is returned)"
    if choice is None:
        raise InfeasiblePlanError(
            f"The {backend_name} solver found no plan within time_limit_s={time_limit_s:g} s "
            "(infeasibility was not proven). Raise time_limit_s or relax the time budget."
        )
    assignment = reduced.assignment(choice)
    bound_s = outcome.bound * formulation.scale.time_step_s
    if not math.isfinite(bound_s):
        bound_s = 0.0  # nothing proven: every plan time is >= 0
    gap = (
        0.0 if status == "OPTIMAL" else max(0.0, (objective_s - bound_s) / max(objective_s, 1e-300))
    )
    alternatives = _runner_ups(
        problem, reduced, formulation, choice, objective_s, top_k, time_limit_s
    )
    return Solution(
        assignment=assignment,
        objective_s=objective_s,
        memory_bytes=plan_memory_bytes(problem, assignment),
        status=status,
        gap=gap,
        backend=label,
        solve_seconds=time.perf_counter() - started,
        num_variables=formulation.num_variables,
        num_constraints=formulation.num_constraints,
        alternatives=alternatives,
    )


def _solve_shared_or_none(problem: Problem, time_limit_s: float) -> Solution | None:
    """The group-shared plan, or None when sharing alone cannot meet the time budget."""
    try:
        return solve(
            dataclasses.replace(problem, share_groups=True),
            time_limit_s=time_limit_s,
            backend=_AUTO_SHARED_BACKEND,
            top_k=1,
        )
    except InfeasiblePlanError:
        return None


def _runner_ups(
    problem: Problem,
    reduced: _Reduced,
    formulation: _Formulation,
    best: list[int],
    best_s: float,
    top_k: int,
    time_limit_s: float,
) -> tuple[Alternative, ...]:
    """Re-solve with a no-good cut per plan found: the k-th best plans, best first."""
    found: list[Alternative] = []
    previous = best
    for rank in range(2, top_k + 1):
        formulation.add_no_good_cut(previous)
        outcome, choice = formulation.solve(time_limit_s, None)
        if choice is None:
            break  # fewer than top_k plans exist, or none was found in time
        assignment = reduced.assignment(choice)
        objective_s = plan_time_s(problem, assignment)
        changes = tuple(
            OptionChange(
                unit=u.name,
                num_blocks=len(u.blocks),
                optimum_option=u.option_names[best[i]],
                option=u.option_names[choice[i]],
            )
            for i, u in enumerate(reduced.units)
            if choice[i] != best[i]
        )
        found.append(
            Alternative(
                rank=rank,
                assignment=assignment,
                objective_s=objective_s,
                memory_bytes=plan_memory_bytes(problem, assignment),
                status="OPTIMAL" if outcome.status == "OPTIMAL" else "FEASIBLE",
                changes=changes,
                reason=_runner_up_reason(rank, objective_s, best_s, changes),
            )
        )
        previous = choice
    return tuple(found)


def _explain_time_budget(
    problem: Problem, reduced: _Reduced, backend_name: str, time_limit_s: float
) -> InfeasiblePlanError:
    """Re-solve without the time budget, to say how far the fastest plan that fits misses it."""
    unbudgeted = _Formulation(reduced, backend_name, with_time_budget=False)
    outcome, choice = unbudgeted.solve(time_limit_s, _greedy_choice(reduced))
    if choice is None:
        return _time_budget_error(problem, None, False, 0.0, time_limit_s)
    return _time_budget_error(
        problem,
        plan_time_s(problem, reduced.assignment(choice)),
        outcome.status == "OPTIMAL",
        outcome.bound * unbudgeted.scale.time_step_s,
        time_limit_s,
    )
