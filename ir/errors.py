"""One exception hierarchy for the whole project.

Every error a user can cause is a `PlannerError` whose message says what was given, what was
needed and what to do. The CLI prints it as one paragraph and exits with code 2. It lives in
`ir/` because `ir/` imports nothing else of the project and every package may raise it.
"""

from __future__ import annotations


class PlannerError(Exception):
    """A user-facing error: bad input, an untraceable model, an infeasible request."""

    exit_code = 2


class ModelLoadError(PlannerError):
    """The model file or Hugging Face config could not be loaded or built."""


class CaptureError(PlannerError):
    """torch.export could not trace the model."""


class IRVerificationError(PlannerError):
    """The IR broke one of its invariants (a bug in a pass, reported with the pass name)."""

    exit_code = 1


class InputError(PlannerError):
    """A command-line or API argument is malformed or out of range."""


class HardwareSpecError(PlannerError):
    """A hardware spec file or preset name is invalid."""


class InfeasiblePlanError(PlannerError):
    """No plan satisfies the constraints (memory, SLO, divisibility)."""
