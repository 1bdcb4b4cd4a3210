"""The workload a plan is made for (read by passes, cost models and codegen)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ir.errors import InputError

WorkloadKind = Literal["decode", "prefill", "train"]
Dtype = Literal["fp32", "bf16", "fp16", "fp8", "fp4"]
WORKLOAD_KINDS: tuple[str, ...] = ("decode", "prefill", "train")
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp8", "fp4")
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}


def dtype_size_bytes(dtype: str) -> float:
    """Bytes per element of a workload dtype name; an unknown name is a user error."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(
            f"dtype {dtype!r} is unknown; choose one of {', '.join(DTYPE_BYTES)}"
        ) from None

# Sharding levels over the dp axis a training plan may choose per block (ZeRO / FSDP):
# 0 everything replicated; 1 optimizer state sharded; 2 + gradients; 3 + parameters.
ZERO_LEVELS: tuple[int, ...] = (0, 1, 2, 3)
RECOMPUTE_CHOICES: tuple[str, ...] = ("auto", "none", "full")

_SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_tokens(text: str | int) -> int:
    """Parse a token count with an optional binary suffix: `128k` = 131072, `1M` = 1048576."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", str(text))
    if not m and re.fullmatch(r"\s*-\s*\d+\s*[kKmMgG]?\s*", str(text)):
        raise InputError(f"token count {text!r} is negative; give 0 or more tokens (e.g. 4096, 128k)")
    if not m:
        raise InputError(
            f"token count {text!r} is not a number; expected an integer with an optional "
            "binary suffix k, M or G (e.g. 4096, 128k, 1M)"
        )
    return int(m.group(1)) * _SUFFIX[m.group(2).lower()]


# Sanity bounds, far above real deployments (1M-token contexts, thousands of sequences),
# that stop a typo such as an extra zero run from reaching the cost model as a plan for
# 10**30 sequences.
MAX_BATCH = 2**24
MAX_TOKENS = 2**32


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What the model is run for.

    decode: `batch` sequences, each with `context` cached tokens, generating `seq` (usually 1)
    new tokens per step; objective time per output token. prefill: `batch` sequences of `seq`
    new tokens after an optional cached prefix of `context` tokens; objective time to first
    token. train: `batch` sequences of `seq` tokens; objective step time."""

    kind: WorkloadKind
    batch: int
    seq: int
    context: int = 0
    weight_dtype: Dtype = "bf16"
    kv_dtype: Dtype = "bf16"
    act_dtype: Dtype = "bf16"
    optimizer: Literal["sgd", "adamw"] = "adamw"
    zero_levels: tuple[int, ...] = ZERO_LEVELS
    recompute: Literal["auto", "none", "full"] = "auto"
    ttl_slo_s: float | None = None
    ttft_slo_s: float | None = None
    # Tokens on the busiest expert-parallel rank over the mean (routing load imbalance).
    expert_skew: float = 1.2

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            raise InputError(f"workload {self.kind!r} is unknown; choose one of {WORKLOAD_KINDS}")
        for name in ("batch", "seq"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.context, int) or self.context < 0:
            raise InputError(f"context must be a non-negative integer, got {self.context!r}")
        for name, limit in (("batch", MAX_BATCH), ("seq", MAX_TOKENS), ("context", MAX_TOKENS)):
            v = getattr(self, name)
            if v > limit:
                raise InputError(
                    f"--{name} {v} is beyond any deployment helixplan plans for (at most "
                    f"{limit} = 2**{limit.bit_length() - 1}); check the value (token counts "
                    "take suffixes: 128k, 1M)"
                )
        for name in ("weight_dtype", "kv_dtype", "act_dtype"):
            if getattr(self, name) not in DTYPES:
                raise InputError(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r} is unknown; "
                    f"choose one of {DTYPES}"
                )
        if isinstance(self.expert_skew, bool) or not isinstance(self.expert_skew, (int, float)) or not (
            self.expert_skew >= 1.0 and self.expert_skew < float("inf")
        ):
            raise InputError(
                f"--expert-skew {self.expert_skew!r} is not a number >= 1 (the busiest expert "
                "rank's tokens over the mean; 1 is perfectly balanced routing)"
            )
        if self.optimizer not in ("sgd", "adamw"):
            raise InputError(f"optimizer {self.optimizer!r} is unknown; choose sgd or adamw")
        levels = tuple(self.zero_levels)
        if not levels or any(v not in ZERO_LEVELS for v in levels) or len(set(levels)) != len(levels):
            raise InputError(
                f"zero levels {list(levels)!r} are not distinct values among {list(ZERO_LEVELS)}; "
                "e.g. --zero 0,1,2,3 (0 replicated, 1 optimizer state sharded over dp, "
                "2 + gradients, 3 + parameters)"
            )
        object.__setattr__(self, "zero_levels", tuple(sorted(levels)))
        if self.recompute not in RECOMPUTE_CHOICES:
            raise InputError(
                f"recompute {self.recompute!r} is unknown; choose one of {RECOMPUTE_CHOICES} "
                "(auto lets the planner decide per block)"
            )

    @property
    def symbol_values(self) -> dict[str, int]:
        """Values of the IR symbols B, T, L for this workload."""
        return {"B": self.batch, "T": self.seq, "L": self.context}
