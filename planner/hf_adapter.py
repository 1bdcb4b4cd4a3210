"""A transformers causal LM under helixplan's forward convention (for tracing `hf:` models).

Its own module so that `planner.model_source` does not import torch: resolving a model
source and loading its cached graph stay torch-free."""

from __future__ import annotations

from typing import Any

import torch


class HFAdapter(torch.nn.Module):
    """Presents a transformers causal LM under the model file contract for tracing (see
    `planner.hf_model.run_causal_lm`): `forward(input_ids, position_ids, past_kv,
    cache_lens)` returns `(logits, new_kv)`. Module paths of the wrapped model keep their
    names (`model.layers.0...`) once `hf.` is stripped."""

    prefix = "hf"

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.hf = model
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                past_kv: Any = None, cache_lens: torch.Tensor | None = None) -> Any:
        from planner.hf_model import run_causal_lm

        return run_causal_lm(self.hf, input_ids, position_ids, past_kv, cache_lens)
