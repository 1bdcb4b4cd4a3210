"""The solvers behind the integer program: scaling float costs to solver numbers (integers
for CP-SAT, scaled reals for MathOpt) and the two backends, each a few primitives
(`new_binary`, `add_equal`, `add_at_most`, `minimize`, `solve`) that the formulation in
`passes.parallelize.ilp_backends` is written against once.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ortools.sat.python import cp_model_helper as cmh

if TYPE_CHECKING:
    from passes.parallelize.ilp_backends import _Reduced

Backend = Literal["auto", "cpsat", "scip", "highs"]

BACKENDS: tuple[str, ...] = ("auto", "cpsat", "scip", "highs")
_SEED = 7
_TIME_STEPS_PER_UPPER_BOUND = 1e9
_MAX_EXACT_INTEGER = 2.0**53
_MIP_FEASIBILITY_TOLERANCE = 1e-9
_INT64_MIN = -(2**63)

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
        # the step is fine enough for the whole model in 2^53 steps; a limit far above that
        # (a tiny model with fractional byte counts on a large GPU) cannot bind, and must
        # stay inside CP-SAT's int64
        return min(math.floor(num_bytes / self.memory_step_bytes), 2**62)


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
    """CP-SAT on a `CpModelProto` written directly (variables are their indices): the proto
    `cp_model.CpModel` would build — linear terms merged per variable and sorted by it, zero
    coefficients dropped, `<=` as the domain [INT64_MIN, upper] — and the same solve,
    without `cp_model`'s module-level `import pandas, numpy` or the `CpBaseModel` wrapper's
    numpy import (0.1 s of a 1 s warm plan). tests/test_ilp.py compares the protos."""

    name = "cpsat"

    def __init__(self, reduced: _Reduced) -> None:
        self.scale = _IntegerScale.of(reduced)
        self.proto = cmh.CpModelProto()
        self.num_variables = 0
        self.num_constraints = 0

    def new_binary(self, name: str) -> int:
        var = self.proto.variables.add()
        var.name = name
        var.domain.extend((0, 1))
        self.num_variables += 1
        return self.num_variables - 1

    new_fraction = new_binary

    @staticmethod
    def _merged(terms: Terms) -> tuple[list[int], list[int]]:
        coeffs: dict[int, int] = {}
        for var, c in terms:
            coeffs[var] = coeffs.get(var, 0) + int(c)
        kept = [(v, c) for v, c in sorted(coeffs.items()) if c != 0]
        return [v for v, _ in kept], [c for _, c in kept]

    def _add_linear(self, terms: Terms, lower: int, upper: int) -> None:
        self.num_constraints += 1
        linear = self.proto.constraints.add().linear
        variables, coeffs = self._merged(terms)
        linear.vars.extend(variables)
        linear.coeffs.extend(coeffs)
        linear.domain.extend((lower, upper))

    def add_equal(self, terms: Terms, rhs: float) -> None:
        self._add_linear(terms, int(rhs), int(rhs))

    def add_at_most(self, terms: Terms, upper: float) -> None:
        self._add_linear(terms, _INT64_MIN, int(upper))

    def minimize(self, terms: Terms) -> None:
        self.proto.clear_objective()
        objective = self.proto.objective
        variables, coeffs = self._merged(terms)
        objective.vars.extend(variables)
        objective.coeffs.extend(coeffs)
        objective.offset = 0.0
        objective.scaling_factor = 1.0

    def solve(self, time_limit_s: float, hint: Mapping[Any, float] | None) -> _Outcome:
        proto = self.proto
        proto.clear_solution_hint()
        for var, value in (hint or {}).items():
            proto.solution_hint.vars.append(var)
            proto.solution_hint.values.append(int(value))
        parameters = cmh.SatParameters()
        parameters.num_workers = 1
        parameters.random_seed = _SEED
        parameters.linearization_level = 2  # the whole model in the LP; see "auto"
        parameters.max_time_in_seconds = time_limit_s
        wrapper = cmh.SolveWrapper()
        wrapper.set_parameters(parameters)
        started = time.perf_counter()
        response = wrapper.solve(proto)
        seconds = time.perf_counter() - started
        status = response.status
        if status == cmh.CpSolverStatus.MODEL_INVALID:
            raise RuntimeError(
                f"CP-SAT rejected the model: {cmh.CpSatHelper.validate_model(proto)}"
            )
        name = {
            cmh.CpSolverStatus.OPTIMAL: "OPTIMAL",
            cmh.CpSolverStatus.FEASIBLE: "FEASIBLE",
            cmh.CpSolverStatus.INFEASIBLE: "INFEASIBLE",
        }.get(status, "UNKNOWN")
        if name in ("INFEASIBLE", "UNKNOWN"):
            return _Outcome(name, None, math.inf, response.best_objective_bound, seconds)

        solution = list(response.solution)  # a copy: the field dies with `response`

        def value(var: int) -> int:
            return solution[var]

        return _Outcome(
            name, value, response.objective_value, response.best_objective_bound, seconds
        )


class _MathOptBackend:
    def __init__(self, reduced: _Reduced, name: Literal["scip", "highs"]) -> None:
        self.name = name
        self.scale = _RealScale.of(reduced)
        from ortools.math_opt.python import mathopt  # SCIP/HiGHS only: 0.1-0.2 s to import

        self.mathopt = mathopt
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
        self.model.add_linear_constraint(self.mathopt.fast_sum(c * v for v, c in terms) == rhs)

    def add_at_most(self, terms: Terms, upper: float) -> None:
        self.num_constraints += 1
        self.model.add_linear_constraint(self.mathopt.fast_sum(c * v for v, c in terms) <= upper)

    def minimize(self, terms: Terms) -> None:
        self.model.minimize(self.mathopt.fast_sum(c * v for v, c in terms))

    def solve(self, time_limit_s: float, hint: Mapping[Any, float] | None) -> _Outcome:
        from ortools.math_opt.solvers import highs_pb2

        params = self.mathopt.SolveParameters(
            time_limit=datetime.timedelta(seconds=time_limit_s),
            random_seed=_SEED,
            relative_gap_tolerance=0.0,
            absolute_gap_tolerance=0.0,
        )
        if self.name == "scip":
            solver_type = self.mathopt.SolverType.GSCIP
            params.threads = 1
            params.gscip.real_params["numerics/feastol"] = _MIP_FEASIBILITY_TOLERANCE
        else:
            solver_type = self.mathopt.SolverType.HIGHS  # MathOpt's HiGHS takes no `threads`
            params.highs.CopyFrom(
                highs_pb2.HighsOptionsProto(
                    double_options={
                        "primal_feasibility_tolerance": _MIP_FEASIBILITY_TOLERANCE,
                        "mip_feasibility_tolerance": _MIP_FEASIBILITY_TOLERANCE,
                    }
                )
            )
        model_params = self.mathopt.ModelSolveParameters(
            solution_hints=[self.mathopt.SolutionHint(variable_values=dict(hint))] if hint else []
        )
        started = time.perf_counter()
        result = self.mathopt.solve(self.model, solver_type, params=params, model_params=model_params)
        seconds = time.perf_counter() - started
        reason = result.termination.reason
        if reason in (
            self.mathopt.TerminationReason.INFEASIBLE,
            self.mathopt.TerminationReason.INFEASIBLE_OR_UNBOUNDED,
        ):
            return _Outcome("INFEASIBLE", None, math.inf, -math.inf, seconds)
        if not result.has_primal_feasible_solution():
            if reason != self.mathopt.TerminationReason.NO_SOLUTION_FOUND:
                raise RuntimeError(
                    f"{self.name} stopped with {reason.name}: {result.termination.detail}"
                )
            return _Outcome("UNKNOWN", None, math.inf, result.best_objective_bound(), seconds)
        values = result.variable_values()
        status = "OPTIMAL" if reason == self.mathopt.TerminationReason.OPTIMAL else "FEASIBLE"
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
