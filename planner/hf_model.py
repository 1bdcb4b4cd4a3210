"""A Hugging Face causal LM as a helixplan model file (build_model, example_inputs).

`helixplan plan hf:config.json` copies this file next to `run_plan.py` as `hf_model.py`,
with the config beside it as `config.json`: the generated program builds its reference
model and initial weights through it, exactly as from a user's model file. It imports only
torch and transformers, so the plan directory runs without helixplan installed.

The model is the prefill helixplan traced: `forward(input_ids)` from position 0 with
transformers' own position ids, no cache, and the causal mask of `causal_masks`. State-dict
names are transformers' own (`model.layers.0.self_attn.q_proj.weight`), so a checkpoint
saved with `save_pretrained` or `safetensors.torch.save_file(model.state_dict())` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def causal_masks(config: Any, tokens: int, device: torch.device) -> Any:
    """[1, 1, T, T] boolean masks (True: attend) for a transformers config: one tensor when
    all layers share a kind, else a dict by layer type ("full_attention",
    "sliding_attention"), the form transformers takes for models that mix them."""
    pos = torch.arange(tokens, device=device)
    behind = pos[:, None] - pos[None, :]
    full = (behind >= 0)[None, None]
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or [])
    if not isinstance(window, int) or (types and "sliding_attention" not in types):
        return full
    sliding = ((behind >= 0) & (behind < window))[None, None]
    if types and types != {"sliding_attention"}:
        return {"full_attention": full, "sliding_attention": sliding}
    return sliding


def load_config(path: str | Path) -> Any:
    import transformers

    raw = json.loads(Path(path).read_text())
    model_type = raw.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **raw)


class HFCausalLM(torch.nn.Module):
    """The transformers model with its top-level children registered on this module, so
    that parameter names are the model's own; forward follows helixplan's convention for a
    prefill: `(logits, ())` (the traced program keeps no cache for hf: models)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._model = [model]  # not a child: its children are ours
        for name, child in model.named_children():
            self.add_module(name, child)
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                past_kv: Any = None, cache_lens: torch.Tensor | None = None) -> tuple:
        if past_kv:
            raise ValueError("hf: models run as a prefill from position 0; a KV cache is not supported yet")
        mask = causal_masks(self.config, input_ids.shape[1], input_ids.device)
        logits = self._model[0](input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        return logits, ()


def build_model(config: str | None = None) -> HFCausalLM:
    """The model of `config` (default: config.json next to this file), with transformers'
    initialization under the caller's torch seed."""
    import transformers

    cfg = load_config(config or Path(__file__).with_name("config.json"))
    return HFCausalLM(transformers.AutoModelForCausalLM.from_config(cfg)).eval()


def example_inputs(workload: str, batch: int, seq: int, context: int, model: Any = None,
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Seeded token ids for a prefill of `seq` tokens from position 0."""
    if workload != "prefill" or context:
        raise ValueError(
            f"hf: models run as a prefill from position 0 (got workload {workload!r}, context "
            f"{context}); run the program with --workload prefill --context 0"
        )
    vocab = int(model.config.vocab_size) if model is not None else int(load_config(Path(__file__).with_name("config.json")).vocab_size)
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=gen).to(device)}
