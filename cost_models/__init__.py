"""Cost models: hardware specs and presets, kernel and collective time, memory, overlap.

Imports point one way: `cost_models` uses `ir` only. Units are in the names: seconds (`_s`),
bytes (`nbytes`, `_bytes`), bytes per second (`_bytes_per_s`).
"""

from cost_models.comm import COLLECTIVE_ALGORITHMS, COLLECTIVE_KINDS, collective_seconds
from cost_models.compute import (
    KernelWork,
    attention_decode_seconds,
    attention_decode_work,
    attention_prefill_seconds,
    attention_prefill_work,
    elementwise_seconds,
    gemm_seconds,
    gemm_work,
    kernel_seconds,
    roofline_seconds,
)
from cost_models.hardware import (
    KERNEL_KINDS,
    PRESETS,
    HardwareSpec,
    KernelEfficiency,
    available_hardware,
    load_hardware,
)
from cost_models.memory import (
    DenseLayerShape,
    MemoryBreakdown,
    dense_layer_memory,
    gradient_bytes,
    inference_activation_bytes,
    kv_cache_bytes,
    mla_kv_cache_bytes,
    optimizer_state_bytes,
    training_activation_bytes,
    weight_bytes,
)
from cost_models.model import CostModel
from cost_models.overlap import (
    OverlapStage,
    batch_sliced_overlap,
    exposed_comm_seconds,
    sliced_overlap,
)
from cost_models.topology import MeshPlacement, build_cluster_graph, group_shape

__all__ = [
    "COLLECTIVE_ALGORITHMS",
    "COLLECTIVE_KINDS",
    "KERNEL_KINDS",
    "PRESETS",
    "CostModel",
    "DenseLayerShape",
    "HardwareSpec",
    "KernelEfficiency",
    "KernelWork",
    "MemoryBreakdown",
    "MeshPlacement",
    "OverlapStage",
    "attention_decode_seconds",
    "attention_decode_work",
    "attention_prefill_seconds",
    "attention_prefill_work",
    "available_hardware",
    "batch_sliced_overlap",
    "build_cluster_graph",
    "collective_seconds",
    "dense_layer_memory",
    "elementwise_seconds",
    "exposed_comm_seconds",
    "gemm_seconds",
    "gemm_work",
    "gradient_bytes",
    "group_shape",
    "inference_activation_bytes",
    "kernel_seconds",
    "kv_cache_bytes",
    "load_hardware",
    "mla_kv_cache_bytes",
    "optimizer_state_bytes",
    "roofline_seconds",
    "sliced_overlap",
    "training_activation_bytes",
    "weight_bytes",
]
