"""A transformers causal LM under helixplan's forward convention (for tracing `hf:` models).

Its own module so that `planner.model_source` does not import torch: resolving a model
source and loading its cached graph stay torch-free."""

from __future__ import annotations

import torch


class HFAdapter(torch.nn.Module):
    """Presents a transformers causal LM under the forward convention for tracing:
    `forward(input_ids) -> logits`, a prefill from position 0 with no cache object. Module
    paths of the wrapped model keep their names (`model.layers.0...`) once `hf.` is stripped.

    The causal mask (with the sliding window where the config has one) is built from two
    aranges (`planner.hf_model.causal_masks`, the generated program's too) and handed to
    transformers as a 4-D mask, which it uses as given: left to itself, transformers derives
    a packed-sequence mask from the position ids through batch-indexed gathers that no layout
    rule can split. Position ids are transformers' own (0 .. T-1)."""

    prefix = "hf"

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.hf = model
        self.config = model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        from planner.hf_model import causal_masks

        mask = causal_masks(self.config, input_ids.shape[1], input_ids.device)
        return self.hf(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
