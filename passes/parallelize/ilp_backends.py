"""Turning a `Problem` into a solver model: reduction and formulation.

The math is written in the docstring of `passes.parallelize.ilp`. Here the problem is reduced
to decision units and couplings, and `_Formulation` builds each constraint family by its own
method against the small backend interface that CP-SAT and MathOpt (SCIP, HiGHS) both
implement (`passes.parallelize.ilp_solvers`, which also turns float costs into solver numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from passes.parallelize.ilp_solvers import Terms, _new_backend, _Outcome

if TYPE_CHECKING:
    from passes.parallelize.ilp import BlockVars, Problem



def _option_names(block: BlockVars) -> tuple[str, ...]:
    return tuple(option.name for option in block.options)


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
class _TwinChain:
    """Interchangeable units, in unit order, and their options' edge classes (each a tuple
    of option indices, ascending; see _twin_chains)."""

    units: tuple[int, ...]
    edge_classes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class _Reduced:
    units: tuple[_Unit, ...]
    couplings: tuple[_Coupling, ...]
    memory_limit_bytes: float
    time_budget_s: float | None
    unit_of_block: Mapping[str, int]
    twin_chains: tuple[_TwinChain, ...] = ()

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
        twin_chains=_twin_chains(units, couplings) if problem.break_symmetry else (),
    )


def _twin_chains(units: Sequence[_Unit], couplings: Sequence[_Coupling]) -> tuple[_TwinChain, ...]:
    """Units that can trade options without changing any plan's time or memory.

    Options s, s' of unit u are edge-equivalent when they fall in the same layout class of
    every coupling of u (no edge cost tells them apart). Units u, v are twins when they have
    the same options, costs, memories and edge-equivalence classes. Then for s, s' in one
    class, (u = s, v = s') and (u = s', v = s) cost the same: the unit costs swap, and
    every coupling sees the same classes. The repeated layers of a per-layer problem are
    twins (up to the first and last, whose edges differ)."""
    signature: list[list[tuple[int, int]]] = [[] for _ in units]
    per_option: list[list[tuple[int, ...]]] = [[() for _ in u.option_names] for u in units]
    for p, coupling in enumerate(couplings):
        for unit, classes in ((coupling.src, coupling.src_class), (coupling.dst, coupling.dst_class)):
            signature[unit].append((p, 0))
            for s, a in enumerate(classes):
                per_option[unit][s] += (p, a)
    chains: dict[tuple, list[int]] = {}
    classes_of: dict[tuple, tuple[tuple[int, ...], ...]] = {}
    for u, unit in enumerate(units):
        label_of: dict[tuple[int, ...], int] = {}
        labels = tuple(label_of.setdefault(key, len(label_of)) for key in per_option[u])
        key = (unit.option_names, unit.cost_s, unit.memory_bytes, labels)
        chains.setdefault(key, []).append(u)
        classes_of[key] = tuple(
            tuple(s for s, label in enumerate(labels) if label == c) for c in range(len(label_of))
        )
    return tuple(
        _TwinChain(tuple(members), tuple(c for c in classes_of[key] if len(c) > 1))
        for key, members in chains.items()
        if len(members) > 1 and any(len(c) > 1 for c in classes_of[key])
    )


def _canonical_choice(reduced: _Reduced, choice: Sequence[int]) -> list[int]:
    """The plan `choice` with the options of each twin chain sorted within each edge class
    (same time and memory, see _twin_chains): the representative the symmetry-breaking rows
    admit."""
    out = list(choice)
    for chain in reduced.twin_chains:
        for members in chain.edge_classes:
            at = [u for u in chain.units if out[u] in members]
            for u, s in zip(at, sorted(out[u] for u in at), strict=True):
                out[u] = s
    return out


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
        self._add_symmetry_breaking()
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

    def _add_symmetry_breaking(self) -> None:
        """Consecutive twins u, v of a chain, both in edge class E (options e_0 < e_1 < ...):
        u's option is at most v's. Per threshold e_k: u at e_k or above and v below e_k
        exclude each other."""
        for chain in self.reduced.twin_chains:
            for u, v in zip(chain.units, chain.units[1:], strict=False):
                for members in chain.edge_classes:
                    for k in range(1, len(members)):
                        terms = [(self.x[u][s], 1) for s in members[k:]]
                        terms += [(self.x[v][s], 1) for s in members[:k]]
                        self.backend.add_at_most(terms, 1)

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
        if hint is not None:
            hint = _canonical_choice(self.reduced, hint)
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
