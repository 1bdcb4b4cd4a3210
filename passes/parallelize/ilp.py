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
          no-good cut (k-th runner-up):  sum_u x[u, s_u^(j)] <= |U| - 1   for each plan j found

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
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ortools.math_opt.python import mathopt
from ortools.math_opt.solvers import highs_pb2
from ortools.sat.python import cp_model

from ir.errors import InfeasiblePlanError

Backend = Literal["auto", "cpsat", "scip", "highs"]
Status = Literal["OPTIMAL", "FEASIBLE"]

BACKENDS: tuple[str, ...] = ("auto", "cpsat", "scip", "highs")
_AUTO_SHARED_BACKEND = "cpsat"
_AUTO_PER_BLOCK_BACKEND = "cpsat"
_SEED = 7
_TIME_STEPS_PER_UPPER_BOUND = 1e9
_MAX_EXACT_INTEGER = 2.0**53
_MIP_FEASIBILITY_TOLERANCE = 1e-9


# ---------------------------------------------------------------------------------------
# The problem as data
# ---------------------------------------------------------------------------------------


def _require_finite_nonnegative(value: float, what: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


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
            _require_finite_nonnegative(cost, f"edge {self.src}->{self.dst} cost_s[{pair}]")

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
            if self.share_groups and _option_names(first) != _option_names(block):
                raise ValueError(
                    f"blocks {first.name!r} and {block.name!r} share group {block.group!r} "
                    "but list different options; a shared group needs one option list"
                )
        for edge in self.edges:
            for end in (edge.src, edge.dst):
                if end not in blocks:
                    raise ValueError(f"edge {edge.src}->{edge.dst} names unknown block {end!r}")
            src_names = set(_option_names(blocks[edge.src]))
            dst_names = set(_option_names(blocks[edge.dst]))
            for s, t in edge.cost_s:
                if s not in src_names or t not in dst_names:
                    raise ValueError(f"edge {edge.src}->{edge.dst} prices unknown pair {(s, t)}")


def _option_names(block: BlockVars) -> tuple[str, ...]:
    return tuple(option.name for option in block.options)


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


def _options_by_block(problem: Problem) -> dict[str, dict[str, Option]]:
    return {b.name: {o.name: o for o in b.options} for b in problem.blocks}


# ---------------------------------------------------------------------------------------
# Reduction to decision units and couplings
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    name: str
    blocks: tuple[str, ...]
    option_names: tuple[str, ...]
    cost_s: tuple[float, ...]
    memory_bytes: tuple[float, ...]


@dataclass(frozen=True)
class _Coupling:
    src: int
    dst: int
    src_class: tuple[int, ...]
    dst_class: tuple[int, ...]
    cost_s: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class _Reduced:
    units: tuple[_Unit, ...]
    couplings: tuple[_Coupling, ...]
    memory_limit_bytes: float
    time_budget_s: float | None
    unit_of_block: Mapping[str, int]

    def time_upper_bound_s(self) -> float:
        return sum(max(u.cost_s) for u in self.units) + sum(
            max(max(row) for row in p.cost_s) for p in self.couplings
        )

    def assignment(self, choice: Sequence[int]) -> dict[str, str]:
        return {
            block: unit.option_names[choice[u]]
            for u, unit in enumerate(self.units)
            for block in unit.blocks
        }


def _reduce(problem: Problem) -> _Reduced:
    members: dict[str, list[BlockVars]] = {}
    for block in problem.blocks:
        members.setdefault(block.group if problem.share_groups else block.name, []).append(block)
    keys = list(members)
    unit_of_block = {b.name: u for u, key in enumerate(keys) for b in members[key]}
    cost = [
        [sum(b.options[s].time_s for b in members[k]) for s in range(len(members[k][0].options))]
        for k in keys
    ]
    memory = [
        [
            sum(b.options[s].memory_bytes for b in members[k])
            for s in range(len(members[k][0].options))
        ]
        for k in keys
    ]
    option_index = [{name: s for s, name in enumerate(_option_names(members[k][0]))} for k in keys]

    matrices: dict[tuple[int, int], list[list[float]]] = {}
    for edge in problem.edges:
        u, v = unit_of_block[edge.src], unit_of_block[edge.dst]
        for (s_name, t_name), seconds in edge.cost_s.items():
            s, t = option_index[u][s_name], option_index[v][t_name]
            if seconds == 0 or (u == v and s != t):
                continue  # one group cannot use two options at once
            if u == v:
                cost[u][s] += seconds
                continue
            key, row, col = ((u, v), s, t) if u < v else ((v, u), t, s)
            if key not in matrices:
                matrices[key] = [[0.0] * len(cost[key[1]]) for _ in cost[key[0]]]
            matrices[key][row][col] += seconds

    couplings = []
    for (u, v), matrix in sorted(matrices.items()):
        src_class, row_reps = _classes([tuple(row) for row in matrix])
        dst_class, col_reps = _classes(list(zip(*matrix, strict=True)))
        class_cost = tuple(tuple(matrix[r][c] for c in col_reps) for r in row_reps)
        if len(row_reps) == 1:
            for t, g in enumerate(dst_class):
                cost[v][t] += class_cost[0][g]
        elif len(col_reps) == 1:
            for s, a in enumerate(src_class):
                cost[u][s] += class_cost[a][0]
        else:
            couplings.append(_Coupling(u, v, src_class, dst_class, class_cost))

    units = tuple(
        _Unit(
            k,
            tuple(b.name for b in members[k]),
            _option_names(members[k][0]),
            tuple(cost[u]),
            tuple(memory[u]),
        )
        for u, k in enumerate(keys)
    )
    return _Reduced(
        units=units,
        couplings=tuple(couplings),
        memory_limit_bytes=problem.memory_capacity_bytes - problem.fixed_memory_bytes,
        time_budget_s=problem.time_budget_s,
        unit_of_block=unit_of_block,
    )


def _classes(vectors: list[tuple[float, ...]]) -> tuple[tuple[int, ...], list[int]]:
    """Class id of each vector (equal vectors share one) and the first index of each class."""
    ids: dict[tuple[float, ...], int] = {}
    representatives: list[int] = []
    for i, vector in enumerate(vectors):
        if vector not in ids:
            ids[vector] = len(representatives)
            representatives.append(i)
    return tuple(ids[vector] for vector in vectors), representatives


# ---------------------------------------------------------------------------------------
# Scaling: where floats become solver numbers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _IntegerScale:
    """CP-SAT numbers: time rounded to steps of `time_step_s`, memory exact in 2^-k bytes."""

    time_step_s: float
    memory_step_bytes: float

    @classmethod
    def of(cls, reduced: _Reduced) -> _IntegerScale:
        values = [w for unit in reduced.units for w in unit.memory_bytes]
        total = max(sum(max(unit.memory_bytes) for unit in reduced.units), 1.0)
        k_max = math.floor(math.log2(_MAX_EXACT_INTEGER / total))
        k = next(
            (
                k
                for k in range(min(0, k_max), k_max + 1)
                if all((w * 2.0**k).is_integer() for w in values)
            ),
            k_max,
        )
        return cls(_time_step_s(reduced), 2.0**-k)

    def time(self, seconds: float) -> int:
        return round(seconds / self.time_step_s)

    def memory(self, num_bytes: float) -> int:
        return math.ceil(num_bytes / self.memory_step_bytes)

    def memory_limit(self, num_bytes: float) -> int:
        return math.floor(num_bytes / self.memory_step_bytes)


@dataclass(frozen=True)
class _RealScale:
    """MIP numbers: time in the same steps unrounded, memory as a fraction of the limit."""

    time_step_s: float
    memory_limit_bytes: float

    @classmethod
    def of(cls, reduced: _Reduced) -> _RealScale:
        return cls(_time_step_s(reduced), max(reduced.memory_limit_bytes, 1.0))

    def time(self, seconds: float) -> float:
        return seconds / self.time_step_s

    def memory(self, num_bytes: float) -> float:
        return num_bytes / self.memory_limit_bytes

    def memory_limit(self, num_bytes: float) -> float:
        return num_bytes / self.memory_limit_bytes


def _time_step_s(reduced: _Reduced) -> float:
    upper = reduced.time_upper_bound_s()
    return upper / _TIME_STEPS_PER_UPPER_BOUND if upper > 0 else 1.0


# ---------------------------------------------------------------------------------------
# Backends: a few primitives each; the formulation is written once against them
# ---------------------------------------------------------------------------------------

Terms = list[tuple[Any, float]]


@dataclass(frozen=True)
class _Outcome:
    status: Literal["OPTIMAL", "FEASIBLE", "INFEASIBLE", "UNKNOWN"]
    values: Callable[[Any], float] | None
    objective: float
    bound: float
    seconds: float


class _CpSatBackend:
    name = "cpsat"

    def __init__(self, reduced: _Reduced) -> None:
        self.scale = _IntegerScale.of(reduced)
        self.model = cp_model.CpModel()
        self.num_variables = 0
        self.num_constraints = 0

    def new_binary(self, name: str) -> Any:
        self.num_variables += 1
        return self.model.new_bool_var(name)

    new_fraction = new_binary

    def _sum(self, terms: Terms) -> Any:
        return cp_model.LinearExpr.weighted_sum([v for v, _ in terms], [int(c) for _, c in terms])

    def add_equal(self, terms: Terms, rhs: float) -> None:
        self.num_constraints += 1
        self.model.add(self._sum(terms) == int(rhs))

    def add_at_most(self, terms: Terms, upper: float) -> None:
        self.num_constraints += 1
        self.model.add(self._sum(terms) <= int(upper))

    def minimize(self, terms: Terms) -> None:
        self.model.minimize(self._sum(terms))

    def solve(self, time_limit_s: float, hint: Mapping[Any, float] | None) -> _Outcome:
        self.model.clear_hints()
        for var, value in (hint or {}).items():
            self.model.add_hint(var, int(value))
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = _SEED
        solver.parameters.linearization_level = 2  # the whole model in the LP; see "auto"
        solver.parameters.max_time_in_seconds = time_limit_s
        started = time.perf_counter()
        status = solver.solve(self.model)
        seconds = time.perf_counter() - started
        if status == cp_model.MODEL_INVALID:
            raise RuntimeError(f"CP-SAT rejected the model: {self.model.validate()}")
        name = {
            cp_model.OPTIMAL: "OPTIMAL",
            cp_model.FEASIBLE: "FEASIBLE",
            cp_model.INFEASIBLE: "INFEASIBLE",
        }.get(status, "UNKNOWN")
        if name in ("INFEASIBLE", "UNKNOWN"):
            return _Outcome(name, None, math.inf, solver.best_objective_bound, seconds)
        return _Outcome(
            name, solver.value, solver.objective_value, solver.best_objective_bound, seconds
        )


class _MathOptBackend:
    def __init__(self, reduced: _Reduced, name: Literal["scip", "highs"]) -> None:
        self.name = name
        self.scale = _RealScale.of(reduced)
        self.model = mathopt.Model(name="helixplan")
        self.num_variables = 0
        self.num_constraints = 0

    def new_binary(self, name: str) -> Any:
        self.num_variables += 1
        return self.model.add_binary_variable(name=name)

    def new_fraction(self, name: str) -> Any:
        self.num_variables += 1
        return self.model.add_variable(lb=0.0, ub=1.0, name=name)

    def add_equal(self, terms: Terms, rhs: float) -> None:
        self.num_constraints += 1
        self.model.add_linear_constraint(mathopt.fast_sum(c * v for v, c in terms) == rhs)

    def add_at_most(self, terms: Terms, upper: float) -> None:
        self.num_constraints += 1
        self.model.add_linear_constraint(mathopt.fast_sum(c * v for v, c in terms) <= upper)

    def minimize(self, terms: Terms) -> None:
        self.model.minimize(mathopt.fast_sum(c * v for v, c in terms))

    def solve(self, time_limit_s: float, hint: Mapping[Any, float] | None) -> _Outcome:
        params = mathopt.SolveParameters(
            time_limit=datetime.timedelta(seconds=time_limit_s),
            random_seed=_SEED,
            relative_gap_tolerance=0.0,
            absolute_gap_tolerance=0.0,
        )
        if self.name == "scip":
            solver_type = mathopt.SolverType.GSCIP
            params.threads = 1
            params.gscip.real_params["numerics/feastol"] = _MIP_FEASIBILITY_TOLERANCE
        else:
            solver_type = mathopt.SolverType.HIGHS  # MathOpt's HiGHS takes no `threads`
            params.highs.CopyFrom(
                highs_pb2.HighsOptionsProto(
                    double_options={
                        "primal_feasibility_tolerance": _MIP_FEASIBILITY_TOLERANCE,
                        "mip_feasibility_tolerance": _MIP_FEASIBILITY_TOLERANCE,
                    }
                )
            )
        model_params = mathopt.ModelSolveParameters(
            solution_hints=[mathopt.SolutionHint(variable_values=dict(hint))] if hint else []
        )
        started = time.perf_counter()
        result = mathopt.solve(self.model, solver_type, params=params, model_params=model_params)
        seconds = time.perf_counter() - started
        reason = result.termination.reason
        if reason in (
            mathopt.TerminationReason.INFEASIBLE,
            mathopt.TerminationReason.INFEASIBLE_OR_UNBOUNDED,
        ):
            return _Outcome("INFEASIBLE", None, math.inf, -math.inf, seconds)
        if not result.has_primal_feasible_solution():
            if reason != mathopt.TerminationReason.NO_SOLUTION_FOUND:
                raise RuntimeError(
                    f"{self.name} stopped with {reason.name}: {result.termination.detail}"
                )
            return _Outcome("UNKNOWN", None, math.inf, result.best_objective_bound(), seconds)
        values = result.variable_values()
        status = "OPTIMAL" if reason == mathopt.TerminationReason.OPTIMAL else "FEASIBLE"
        return _Outcome(
            status,
            values.__getitem__,
            result.objective_value(),
            result.best_objective_bound(),
            seconds,
        )


def _new_backend(reduced: _Reduced, name: str) -> _CpSatBackend | _MathOptBackend:
    if name == "cpsat":
        return _CpSatBackend(reduced)
    if name in ("scip", "highs"):
        return _MathOptBackend(reduced, name)  # type: ignore[arg-type]
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


# ---------------------------------------------------------------------------------------
# The formulation: one method per constraint family
# ---------------------------------------------------------------------------------------


class _Formulation:
    """The integer program of the module docstring, built on one backend."""

    def __init__(
        self, reduced: _Reduced, backend_name: str, *, with_time_budget: bool = True
    ) -> None:
        self.reduced = reduced
        self.backend = _new_backend(reduced, backend_name)
        self.scale = self.backend.scale
        self.x = [
            [self.backend.new_binary(f"x[{u.name}|{s}]") for s in u.option_names]
            for u in reduced.units
        ]
        self.z = [
            [
                [self.backend.new_fraction(f"z[{p}|{a},{g}]") for g in range(len(row))]
                for a, row in enumerate(c.cost_s)
            ]
            for p, c in enumerate(reduced.couplings)
        ]
        self._add_one_option_per_block()
        self._add_edge_linearization()
        self._add_memory_capacity()
        if with_time_budget and reduced.time_budget_s is not None:
            self._add_time_budget(reduced.time_budget_s)
        self.backend.minimize(self._time_terms())
        self.num_variables = self.backend.num_variables
        self.num_constraints = self.backend.num_constraints  # before any no-good cut

    def _add_one_option_per_block(self) -> None:
        for x_u in self.x:
            self.backend.add_equal([(x, 1) for x in x_u], 1)

    def _add_edge_linearization(self) -> None:
        for p, coupling in enumerate(self.reduced.couplings):
            z = self.z[p]
            for a in range(len(z)):
                members = [
                    (self.x[coupling.src][s], -1)
                    for s, c in enumerate(coupling.src_class)
                    if c == a
                ]
                self.backend.add_equal([(var, 1) for var in z[a]] + members, 0)
            for g in range(len(z[0])):
                members = [
                    (self.x[coupling.dst][t], -1)
                    for t, c in enumerate(coupling.dst_class)
                    if c == g
                ]
                self.backend.add_equal([(z[a][g], 1) for a in range(len(z))] + members, 0)

    def _add_memory_capacity(self) -> None:
        terms = [
            (self.x[u][s], self.scale.memory(w))
            for u, unit in enumerate(self.reduced.units)
            for s, w in enumerate(unit.memory_bytes)
            if w > 0
        ]
        self.backend.add_at_most(terms, self.scale.memory_limit(self.reduced.memory_limit_bytes))

    def _add_time_budget(self, budget_s: float) -> None:
        self.backend.add_at_most(self._time_terms(), self.scale.time(budget_s))

    def add_no_good_cut(self, choice: Sequence[int]) -> None:
        """Cut off exactly the plan `choice` (one option index per unit)."""
        self.backend.add_at_most([(self.x[u][s], 1) for u, s in enumerate(choice)], len(choice) - 1)

    def _time_terms(self) -> Terms:
        terms = [
            (self.x[u][s], self.scale.time(c))
            for u, unit in enumerate(self.reduced.units)
            for s, c in enumerate(unit.cost_s)
        ]
        for p, coupling in enumerate(self.reduced.couplings):
            terms += [
                (self.z[p][a][g], self.scale.time(c))
                for a, row in enumerate(coupling.cost_s)
                for g, c in enumerate(row)
            ]
        return [(var, c) for var, c in terms if c != 0]

    def hint_values(self, choice: Sequence[int]) -> dict[Any, float]:
        """A complete solution for `choice`: x one-hot, z the product of the classes."""
        values = {
            x: float(s == choice[u]) for u, x_u in enumerate(self.x) for s, x in enumerate(x_u)
        }
        for p, coupling in enumerate(self.reduced.couplings):
            a_chosen = coupling.src_class[choice[coupling.src]]
            g_chosen = coupling.dst_class[choice[coupling.dst]]
            for a, z_a in enumerate(self.z[p]):
                for g, z in enumerate(z_a):
                    values[z] = float(a == a_chosen and g == g_chosen)
        return values

    def solve(
        self, time_limit_s: float, hint: Sequence[int] | None
    ) -> tuple[_Outcome, list[int] | None]:
        outcome = self.backend.solve(
            time_limit_s, self.hint_values(hint) if hint is not None else None
        )
        return outcome, self.read_choice(outcome)

    def read_choice(self, outcome: _Outcome) -> list[int] | None:
        if outcome.values is None:
            return None
        return [
            max(range(len(x_u)), key=lambda s, x_u=x_u: outcome.values(x_u[s])) for x_u in self.x
        ]


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
        raise _time_budget_error(problem, reduced, backend_name, time_limit_s)
    status: Status = "OPTIMAL" if outcome.status == "OPTIMAL" else "FEASIBLE"
    objective_s = math.inf if choice is None else plan_time_s(problem, reduced.assignment(choice))
    if shared is not None and shared.objective_s < objective_s:
        # At least as good as whatever the per-block search proved, so the status stands.
        choice, objective_s = _choice_from_hint(reduced, shared.assignment), shared.objective_s
        if status != "OPTIMAL":
            label += " (kept the shared plan: the per-block search did not beat it in time)"
    if choice is None:
        raise InfeasiblePlanError(
            f"The {backend_name} solver found no plan within time_limit_s={time_limit_s:g} s "
            "(infeasibility was not proven). Raise time_limit_s or relax the time budget."
        )
    assignment = reduced.assignment(choice)
    bound_s = outcome.bound * formulation.scale.time_step_s
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


def _runner_up_reason(
    rank: int, objective_s: float, best_s: float, changes: Sequence[OptionChange]
) -> str:
    slower = objective_s - best_s
    percent = 100.0 * slower / best_s if best_s > 0 else 0.0
    moved = "; ".join(
        f"{c.unit}: {c.optimum_option} -> {c.option}"
        + (f" ({c.num_blocks} blocks)" if c.num_blocks > 1 else "")
        for c in changes[:4]
    )
    more = f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
    return (
        f"plan #{rank}: best plan left after cutting off the {rank - 1} better one(s); "
        f"{_fmt_s(abs(slower))} ({abs(percent):.2f}%) {'slower' if slower >= 0 else 'faster'} "
        f"than the plan returned; differs in {moved}{more}"
    )


# ---------------------------------------------------------------------------------------
# Infeasibility diagnostics
# ---------------------------------------------------------------------------------------


def _check_simple_bounds(problem: Problem) -> None:
    """Raise when a block has no option, memory cannot fit, or the budget is below a bound."""
    for block in problem.blocks:
        if not block.options:
            raise InfeasiblePlanError(
                f"Block {block.name!r} has no candidate strategy, so no plan exists. "
                "Check the GPU count and mesh: every strategy of this block was ruled out."
            )
    min_memory = problem.fixed_memory_bytes + sum(
        min(o.memory_bytes for o in b.options) for b in problem.blocks
    )
    if min_memory > problem.memory_capacity_bytes:
        per_group: dict[str, float] = {}
        for b in problem.blocks:
            per_group[b.group] = per_group.get(b.group, 0.0) + min(
                o.memory_bytes for o in b.options
            )
        largest = sorted(per_group.items(), key=lambda item: -item[1])[:3]
        listing = ", ".join(f"{group} {_fmt_bytes(num)}" for group, num in largest)
        raise InfeasiblePlanError(
            f"Memory binds: even the smallest option of every block needs {_fmt_bytes(min_memory)} "
            f"per GPU ({_fmt_bytes(problem.fixed_memory_bytes)} fixed; largest groups: {listing}), "
            f"but the capacity is {_fmt_bytes(problem.memory_capacity_bytes)}. "
            "Use more GPUs (more sharding), a smaller batch or context, or GPUs with more memory."
        )
    if problem.time_budget_s is not None:
        fastest_s = _time_lower_bound_s(problem)
        if fastest_s > problem.time_budget_s:
            raise InfeasiblePlanError(
                f"The time budget binds: it is {_fmt_s(problem.time_budget_s)}, but the fastest "
                f"option of every block with the cheapest resharding on every edge, ignoring "
                f"memory, already takes {_fmt_s(fastest_s)}. Raise the budget to at least that, "
                "or use more or faster GPUs."
            )


def _time_lower_bound_s(problem: Problem) -> float:
    blocks = {b.name: b for b in problem.blocks}
    total = sum(min(o.time_s for o in b.options) for b in problem.blocks)
    for edge in problem.edges:
        num_pairs = len(blocks[edge.src].options) * len(blocks[edge.dst].options)
        if len(edge.cost_s) == num_pairs:
            total += min(edge.cost_s.values())
    return total


def _time_budget_error(
    problem: Problem, reduced: _Reduced, backend_name: str, time_limit_s: float
) -> InfeasiblePlanError:
    """Explain an infeasible solve: memory fits on its own, so the time budget binds."""
    budget_s = problem.time_budget_s if problem.time_budget_s is not None else math.inf
    unbudgeted = _Formulation(reduced, backend_name, with_time_budget=False)
    outcome, choice = unbudgeted.solve(time_limit_s, _greedy_choice(reduced))
    if choice is None:
        fastest = "no plan that fits in memory was found to compare with"
    else:
        fastest_s = plan_time_s(problem, reduced.assignment(choice))
        bound_s = outcome.bound * unbudgeted.scale.time_step_s
        proof = (
            "proven optimal"
            if outcome.status == "OPTIMAL"
            else f"best found in {time_limit_s:g} s; lower bound {_fmt_s(bound_s)}"
        )
        fastest = f"the fastest plan that fits in memory takes {_fmt_s(fastest_s)} ({proof})"
    return InfeasiblePlanError(
        f"The time budget binds: it is {_fmt_s(budget_s)}, but {fastest}. Ignoring memory and "
        f"resharding the blocks alone would take {_fmt_s(_time_lower_bound_s(problem))}, so the "
        f"memory cap of {_fmt_bytes(problem.memory_capacity_bytes)} per GPU and resharding make "
        "up the rest. Raise the budget, or use more GPUs or GPUs with more memory."
    )


def _fmt_s(seconds: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= factor:
            return f"{seconds / factor:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def _fmt_bytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.3f} GiB"
