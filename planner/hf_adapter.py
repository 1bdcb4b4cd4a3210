"""A transformers causal LM under helixplan's forward convention (for tracing `hf:` models).

Its own module so that `planner.model_source` does not import torch: resolving a model
source and loading its cached graph stay torch-free."""

from __future__ import annotations

import torch


class HFAdapter(torch.nn.Module):
    """Presents a transformers causal LM under the forward convention for tracing:
    `forward(input_ids, position_ids) -> logits` (prefill, no cache object). Module paths of
    the wrapped model keep their names (`model.layers.0...`) once `hf.` is stripped."""

    prefix = "hf"

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.hf = model
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
