"""ONNX Runtime sessions: provider choice, session options, IO binding on CUDA, provider reporting.

Follows ONNX Runtime's own tools: SessionOptions first; providers an explicit ordered list ending in
CPUExecutionProvider, checked against `get_available_providers()`; the providers actually in use
read back from the session (onnxruntime-gpu without a usable GPU logs an error and silently falls
back to CPU, so the request alone says nothing).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from textclassify.runtime.errors import BundleError, ConfigError, MissingDependencyError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDER_SHORTHANDS = ("auto", "cpu", "cuda")
# ONNX Runtime's own graph fusions left out of CPU-only sessions. SkipLayerNormFusion: on ORT 1.32 the CPU
# SkipLayerNormalization kernel took 3x the time of the Add + LayerNormalization it replaces (MiniLM,
# batch 32: 247 ms against 83 ms over 16 batches, profiled), so fp32 ran 20% and int8 15% slower with it.
# CUDA sessions keep it: there the fused kernel is the fast one.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module, or MissingDependencyError naming the extras that install it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise MissingDependencyError(
            "onnxruntime is not installed; install textclassify[cpu] (pip install 'textclassify[cpu]') "
            "or, on a CUDA machine, textclassify[gpu] -- never both."
        ) from None


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, in its order of preference."""
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Turn "auto" | "cpu" | "cuda" | a list into an ordered provider list ending in CPUExecutionProvider."""
    available = available_providers()
    if isinstance(providers, str):
        if providers not in PROVIDER_SHORTHANDS:
            raise ConfigError(f"'providers' must be one of {list(PROVIDER_SHORTHANDS)} or a list of "
                              f"execution provider names (got {providers!r}).")
        if providers == "cpu":
            return [CPU]
        if providers == "cuda" and CUDA not in available:
            raise ConfigError(f"providers='cuda' but this onnxruntime offers no {CUDA} (available: {available}); "
                              "install textclassify[gpu] (onnxruntime-gpu) instead of textclassify[cpu].")
        if providers == "cuda" or CUDA in available:
            return [CUDA, CPU]
        return [CPU]
    if not isinstance(providers, (list, tuple)) or not providers \
            or not all(isinstance(p, str) for p in providers):
        raise ConfigError(f"'providers' must be 'auto', 'cpu', 'cuda' or a non-empty list of execution "
                          f"provider names (got {providers!r}).")
    missing = [p for p in providers if p not in available]
    if missing:
        raise ConfigError(f"providers {missing} are not available in this onnxruntime (available: {available}).")
    ordered = list(dict.fromkeys(p for p in providers if p != CPU))
    return ordered + [CPU]


def session_options(intra_op_num_threads: int | None = None, *, spinning: bool = True) -> Any:
    """SessionOptions: full graph optimisation, ONNX format only, optional intra-op thread count.

    `spinning=False` stops the intra-op threads busy-waiting for work after each run: right when two
    sessions take turns on the same cores (int8 and its fp32 recheck), where one's spinning threads
    would take the cores from the other.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.load_model_format", "ONNX")
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = int(intra_op_num_threads)
    return options


def inference_session(model: bytes | str, providers: Sequence[str], options: Any) -> Any:
    """An InferenceSession on `model` (bytes or a path), with CPU_DISABLED_OPTIMIZERS off unless CUDA is asked for."""
    ort = import_onnxruntime()
    disabled = [] if CUDA in providers else list(CPU_DISABLED_OPTIMIZERS)
    return ort.InferenceSession(model, sess_options=options, providers=list(providers), disabled_optimizers=disabled)


class OnnxModel:
    """One InferenceSession on a verified graph (bytes or path); `run` binds IO on CUDA, plain `run` on CPU.

    Thread-safe: ORT sessions allow concurrent `run`; an IO binding is created per call, never shared.
    """

    def __init__(self, name: str, model: bytes | str, providers: Sequence[str], options: Any,
                 required_inputs: Sequence[str], required_outputs: Sequence[str]) -> None:
        self.name = name
        try:
            self.session = inference_session(model, providers, options)
        except Exception as e:  # noqa: BLE001 -- ORT raises its own exception types for malformed graphs
            raise BundleError(f"{name}: ONNX Runtime could not load it ({_first_line(e)}).") from None
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        for kind, want, have in (("input", required_inputs, list(self.input_types)),
                                 ("output", required_outputs, self.output_names)):
            absent = [n for n in want if n not in have]
            if absent:
                raise BundleError(f"{name}: the graph has no {kind} {absent} (its {kind}s: {have}).")
        self.providers: list[str] = list(self.session.get_providers())
        self.uses_cuda = CUDA in self.providers
        # Where outputs are bound: "cuda" keeps them on the GPU until copied once; None runs plainly.
        self.bind_device: str | None = "cuda" if self.uses_cuda else None

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run the graph on CPU arrays; returns the named outputs as numpy arrays."""
        if self.bind_device is None:
            return self.session.run(list(outputs), dict(feeds))
        binding = self.session.io_binding()
        for key, value in feeds.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for key in outputs:
            binding.bind_output(key, self.bind_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
