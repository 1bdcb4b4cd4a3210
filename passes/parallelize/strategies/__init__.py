"""The strategy library: one module per parallelism, collected here in a fixed order."""

from __future__ import annotations

from passes.parallelize.strategies.baselines import TP_ATTN_GROUP, TP_KVDUP
from passes.parallelize.strategies.cp import CP_PASS_KV, CP_PASS_Q
from passes.parallelize.strategies.dp import DP
from passes.parallelize.strategies.ep import EP, EP_DISPATCH, TP_EP
from passes.parallelize.strategies.helix import HELIX
from passes.parallelize.strategies.replicate import REPLICATE_STRATEGY
from passes.parallelize.strategies.tp import TP
from passes.parallelize.strategies.tp_sp import TP_SP
from passes.parallelize.strategies.vocab import VOCAB
from passes.parallelize.strategy import Strategy

STRATEGIES: tuple[Strategy, ...] = (
    REPLICATE_STRATEGY, DP, TP, TP_SP, VOCAB, HELIX, CP_PASS_KV, CP_PASS_Q, EP, EP_DISPATCH,
    TP_EP, TP_KVDUP, TP_ATTN_GROUP,
)
BY_NAME: dict[str, Strategy] = {s.name: s for s in STRATEGIES}
# Offered unless the user asks otherwise: the strategies verified end to end.
DEFAULT_STRATEGIES: frozenset[str] = frozenset(s.name for s in STRATEGIES if s.default)
