"""Layer dedup: tracing two layers of each run and unrolling gives the graph a full trace
gives (`planner.truncate`, `passes.unroll.UnrollLayers`)."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from ir.graph import Graph, ValueRef
from ir.verify import verify_graph
from passes.unroll import NotUnrollable
from planner.commands.inspect import inspect_report
from planner.frontend import trace_graph
from planner.model_source import build_model, resolve_source
from planner.truncate import Truncation, find_layer_container, layer_signature, plan_truncation
from tests.conftest import EXAMPLES, HF_CONFIGS

# Each has a run of three or more identical layers, so at least one layer is a copy; most
# have a run of four, where a copy reads another copy.
MODEL_FILES = [
    ("llama", (("layers", "4"),)),
    ("gpt2", (("layers", "4"),)),
    ("mixtral", (("layers", "3"),)),
    ("deepseek", (("layers", "7"), ("first_k_dense", "3"))),
]


@functools.cache
def _graph(spec: str, args: tuple[tuple[str, str], ...], dedup: bool) -> Graph:
    return trace_graph(resolve_source(spec, dict(args)), dedup=dedup).graph


def _hf_config(tmp_dir: Path, name: str, layers: int, **changes) -> str:
    cfg = json.loads((HF_CONFIGS / f"{name}.json").read_text())
    cfg["n_layer" if "n_layer" in cfg else "num_hidden_layers"] = layers
    cfg.update(changes)
    path = tmp_dir / f"{name}_{layers}_{'_'.join(changes)}.json"
    path.write_text(json.dumps(cfg))
    return f"hf:{path}"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-deep")


def _layers(spec: str, args) -> int:
    return len(find_layer_container(build_model(resolve_source(spec, dict(args))))[1])


def _blocks(g: Graph) -> list[tuple]:
    return [
        (b.name, b.kind, b.layer, b.group, b.signature, b.dims, b.traits, b.param_count,
         b.flops, b.bytes_moved, b.module_path, b.params)
        for b in g.blocks
    ]


def _canonical(g: Graph) -> dict:
    """The graph with op and value names replaced by program positions: equal for two graphs
    that differ only in how their ops are named."""
    name = {v: v for v in [*g.inputs, *g.params]}
    for i, op in enumerate(g.ops):
        for m, v in enumerate(op.outputs):
            name[v] = f"%{i}.{m}"

    def refs(a):
        if isinstance(a, ValueRef):
            return name[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(refs(x) for x in a)
        if isinstance(a, dict):
            return {k: refs(v) for k, v in a.items()}
        return a

    index = {op.name: i for i, op in enumerate(g.ops)}
    return {
        "ops": [
            (o.target, o.module_path, o.module_types, tuple(name[v] for v in o.inputs),
             len(o.outputs), refs(o.attrs))
            for o in g.ops
        ],
        "values": {name[v]: s for v, s in g.values.items()},
        "inputs": g.inputs,
        "outputs": [name[v] for v in g.outputs],
        "params": list(g.params.items()),
        "blocks": [(*t, tuple(index[o] for o in b.ops)) for t, b in zip(_blocks(g), g.blocks, strict=True)],
    }


def _check_deduplicated(dedup: Graph, full: Graph, layers: int, spec: str, args) -> None:
    traced = dedup.meta.get("traced_layers")
    assert traced is not None and len(traced) < layers, traced
    assert "traced_layers" not in full.meta
    verify_graph(dedup)
    assert _canonical(dedup) == _canonical(full)
    assert Counter(o.target for o in dedup.ops) == Counter(o.target for o in full.ops)
    assert dedup.inputs == full.inputs and len(dedup.outputs) == len(full.outputs)
    assert {v: (p.name, p.shape) for v, p in dedup.params.items()} == {
        v: (p.name, p.shape) for v, p in full.params.items()
    }
    model = build_model(resolve_source(spec, dict(args)))
    assert dedup.param_count == sum(p.numel() for p in model.parameters())
    assert sorted({b.layer for b in dedup.blocks if b.layer is not None}) == list(range(layers))
    for point in ({"batch": 2, "seq": 3, "context": 5}, {"batch": 8, "seq": 1, "context": 4096}):
        assert inspect_report(dedup, **point) == inspect_report(full, **point)


@pytest.mark.parametrize("name,args", MODEL_FILES, ids=[m[0] for m in MODEL_FILES])
def test_model_files_unroll_to_the_full_trace(name, args):
    spec = str(EXAMPLES / f"{name}.py")
    dedup, full = _graph(spec, args, True), _graph(spec, args, False)
    _check_deduplicated(dedup, full, _layers(spec, args), spec, args)
    # Model files export without per-layer shape arithmetic, so even the names are a full
    # trace's: the unrolled graph is the full graph.
    assert dedup.ops == full.ops
    assert [o.attrs for o in dedup.ops] == [o.attrs for o in full.ops]
    assert list(dedup.values.items()) == list(full.values.items())
    assert dedup.outputs == full.outputs
    assert list(dedup.params.items()) == list(full.params.items())
    assert dedup.blocks == full.blocks and _blocks(dedup) == _blocks(full)


HF_CASES = [
    ("llama_tiny", 4, {}),
    ("gpt2_tiny", 3, {}),
    ("deepseek_v3_tiny", 4, {}),
    # Full attention in layers 0-2, sliding window in 3-5: two runs, told apart by a
    # per-layer config list and attribute, not by weights.
    (
        "llama_tiny",
        6,
        {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
         "sliding_window": 4, "max_window_layers": 3},
    ),
]


@pytest.mark.parametrize("name,layers,changes", HF_CASES, ids=["llama", "gpt2", "deepseek", "qwen2-sliding"])
def test_hf_configs_unroll_to_the_full_trace(hf_dir, name, layers, changes):
    spec = _hf_config(hf_dir, name, layers, **changes)
    dedup, full = _graph(spec, (), True), _graph(spec, (), False)
    _check_deduplicated(dedup, full, _layers(spec, ()), spec, ())
    if changes:
        assert dedup.meta["traced_layers"] == [0, 1, 3, 4]
        attention = [o for o in dedup.ops if o.target == "scaled_dot_product_attention"]
        masks = [o.inputs[3] for o in attention]
        assert masks[0] == masks[2] != masks[3] == masks[5], masks


def test_runs_keep_their_first_two_layers():
    v3 = build_model(resolve_source(str(EXAMPLES / "deepseek.py"), {"preset": "deepseek-v3"}))
    assert plan_truncation(v3) == Truncation("model.layers", 61, (0, 1, 3, 4))
    big = build_model(resolve_source(str(EXAMPLES / "llama.py"), {"preset": "llama3.1-405b"}))
    assert plan_truncation(big) == Truncation("model.layers", 126, (0, 1))
    tiny = build_model(resolve_source(str(EXAMPLES / "llama.py")))
    assert "no run of more than 2" in plan_truncation(tiny)


def test_layer_container_is_the_outermost_list():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(8))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Layer() for _ in range(3))

    path, layers = find_layer_container(Model())
    assert path == "layers" and len(layers) == 3


def test_signature_sees_attributes_but_not_the_layer_index():
    class Layer(torch.nn.Module):
        def __init__(self, index: int, window: int | None):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.layer_idx = index
            self.window = window

    same = [layer_signature(Layer(i, None), i) for i in range(3)]
    assert len(set(same)) == 1
    assert layer_signature(Layer(3, 128), 3) != same[0]
    assert layer_signature(Layer(5, None), 4) != same[0]  # an index that is not its own


def test_unroll_refuses_layers_that_differ():
    """A dense layer followed by MoE layers, claimed to be one run: the two traced layers
    do not match op for op, so unrolling must refuse rather than copy the MoE layer."""
    from planner.frontend import _trace_truncated
    from planner.model_source import TRACE_BATCH, TRACE_CONTEXT, TRACE_SEQ, example_kwargs

    source = resolve_source(str(EXAMPLES / "deepseek.py"), {"layers": "4", "first_k_dense": "1"})
    model = build_model(source)
    kwargs = example_kwargs(
        source, model, workload="decode", batch=TRACE_BATCH, seq=TRACE_SEQ, context=TRACE_CONTEXT
    )
    with pytest.raises(NotUnrollable, match="traced layers 0 and 1"):
        _trace_truncated(source, model, kwargs, Truncation("model.layers", 4, (0, 1)), {})


INDEXED_BY_CONFIG = '''
import torch
from torch import nn
from dataclasses import dataclass

@dataclass(frozen=True)
class Config:
    num_hidden_layers: int = 4
    vocab_size: int = 64
    hidden_size: int = 16

class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                    for _ in range(config.num_hidden_layers))
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_ids, position_ids):
        x = self.embed(input_ids)
        for i in range(self.config.num_hidden_layers):  # breaks when layers are left out
            x = x + torch.relu(self.layers[i](x))
        return self.head(x)

def build_model(**size):
    return Model(Config())

def example_inputs(workload, batch, seq, context, model=None, device="cpu"):
    ids = torch.zeros(batch, seq, dtype=torch.long)
    return {"input_ids": ids.to(device), "position_ids": ids.to(device)}
'''


def test_untruncatable_forward_falls_back_to_every_layer(tmp_path, monkeypatch):
    import planner.frontend as frontend

    path = tmp_path / "indexed.py"
    path.write_text(INDEXED_BY_CONFIG)
    warnings: list[str] = []
    monkeypatch.setattr(frontend.log, "warning", lambda msg, *a: warnings.append(msg % a))
    graph = trace_graph(resolve_source(str(path)), dedup=True).graph
    assert "traced_layers" not in graph.meta
    assert len(warnings) == 1 and "traced all 4 layers" in warnings[0]
    assert {o.module_path for o in graph.ops} >= {f"layers.{i}" for i in range(4)}


def test_env_var_traces_every_layer(monkeypatch):
    source = resolve_source(str(EXAMPLES / "llama.py"), {"layers": "3"})
    monkeypatch.setenv("HELIXPLAN_TRACE_ALL_LAYERS", "1")
    assert "traced_layers" not in trace_graph(source).graph.meta
    monkeypatch.delenv("HELIXPLAN_TRACE_ALL_LAYERS")
    assert trace_graph(source).graph.meta["traced_layers"] == [0, 1]
