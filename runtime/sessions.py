"""ONNX Runtime sessions: provider plan, session options, CUDA fallback, IO binding, warm-up shapes.

Follows ONNX Runtime's own tools: SessionOptions first; providers an explicit ordered list ending in
CPUExecutionProvider, checked against `get_available_providers()`; the providers actually in use
read back from each session. onnxruntime-gpu without a usable GPU, CUDA 12 or cuDNN 9 logs an error
and silently builds a CPU session, so the request alone says nothing: `open_with_fallback` compares
what was asked with what each session got, and on a shortfall reopens every session CPU-only with the
CPU options (under providers="auto", with one warning) or raises ConfigError (under "cuda").
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from textclassify.runtime.errors import BundleError, ConfigError, MissingDependencyError, TextClassifyError, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDER_SHORTHANDS = ("auto", "cpu", "cuda")
# ONNX Runtime's own graph fusions left out of CPU-only sessions. SkipLayerNormFusion: ORT's CPU
# SkipLayerNormalization kernel is slower than the Add + LayerNormalization it replaces, so fp32 and int8
# encoders run slower with it (figures: benchmarks/README.md). CUDA sessions keep it: there the fused
# kernel is the fast one.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# A CUDA session's CPU threads only launch kernels and run the odd shape op: one intra-op thread, not
# spinning, leaves the cores to tokenisation and the LLM client.
CUDA_INTRA_OP_THREADS = 1
# On CUDA, padded widths are rounded up to a multiple of 8 (capped at max_length): fp16 tensor-core
# GEMMs want dimensions in multiples of 8, and fewer distinct shapes means fewer kernel selections.
CUDA_PAD_MULTIPLE = 8

_T = TypeVar("_T")


class CudaSessionError(ConfigError):
    """A graph that ONNX Runtime opens on the CPU could not be opened with CUDA (bad device id, CUDA init failure)."""


_preload_lock = threading.Lock()
_preloaded = False


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


def preload_cuda_libraries() -> None:
    """Load the CUDA 12 and cuDNN 9 libraries of the nvidia-* wheels (textclassify[gpu]) once per process.

    `onnxruntime.preload_dlls` exists from ORT 1.21; without it (or without the wheels) ORT searches the
    system's library path itself, and a CUDA session that cannot find them falls back, which
    `open_with_fallback` catches.
    """
    global _preloaded
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        preload = getattr(import_onnxruntime(), "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except OSError:  # a library it found but could not load: the session check reports the outcome
                pass


@dataclasses.dataclass(frozen=True)
class ProviderPlan:
    """What the runtime asks of ONNX Runtime: providers in order, CUDA's options, and how strict the request is.

    `strict` (providers="cuda") turns a CUDA shortfall into ConfigError; otherwise the runtime falls back
    to CPU. `fallback` is set on the CPU plan that replaced a CUDA one, and says why.
    """

    providers: tuple[str, ...]
    device_id: int = 0
    use_tf32: bool = False
    strict: bool = False
    intra_op_num_threads: int | None = None
    fallback: str | None = None

    @property
    def on_cuda(self) -> bool:
        return CUDA in self.providers

    def provider_options(self) -> list[dict[str, str]]:
        """One options dict per provider, in order (ONNX Runtime's `provider_options` argument)."""
        return [self.cuda_options() if p == CUDA else {} for p in self.providers]

    def cuda_options(self) -> dict[str, str]:
        """CUDAExecutionProvider options: the device; the arena grows by what is asked (not to the next power
        of two); TF32 off unless asked, so fp32 on Ampere or newer keeps the export's 1e-4 parity."""
        return {"device_id": str(self.device_id), "arena_extend_strategy": "kSameAsRequested",
                "use_tf32": "1" if self.use_tf32 else "0"}

    def session_options(self, *, spinning: bool = True, threads: int | None = None) -> Any:
        """SessionOptions for this plan: on CUDA no spinning and CUDA_INTRA_OP_THREADS unless `threads`
        or the plan's intra_op_num_threads says otherwise; on CPU the caller's choice."""
        threads = threads if threads is not None else self.intra_op_num_threads
        if self.on_cuda:
            return session_options(CUDA_INTRA_OP_THREADS if threads is None else threads, spinning=False)
        return session_options(threads, spinning=spinning)

    def cpu(self, fallback: str | None = None) -> ProviderPlan:
        """The same plan on CPUExecutionProvider alone."""
        return dataclasses.replace(self, providers=(CPU,), fallback=fallback or self.fallback)

    def open(self, name: str, model: bytes | str, required_inputs: Sequence[str], required_outputs: Sequence[str],
             *, spinning: bool = True, threads: int | None = None) -> OnnxModel:
        """An OnnxModel on `model` with this plan's providers, provider options and session options."""
        return OnnxModel(name, model, self.providers, self.session_options(spinning=spinning, threads=threads),
                         required_inputs, required_outputs, provider_options=self.provider_options())


def plan_providers(providers: str | Sequence[str] = "auto", *, device_id: int = 0, use_tf32: bool = False,
                   intra_op_num_threads: int | None = None) -> ProviderPlan:
    """Check the arguments, resolve the providers and, where CUDA is asked for, preload its libraries."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ConfigError(f"'device_id' must be an int >= 0 (got {device_id!r}).")
    if not isinstance(use_tf32, bool):
        raise ConfigError(f"'use_tf32' must be True or False (got {use_tf32!r}).")
    resolved = tuple(resolve_providers(providers))
    if CUDA in resolved:
        preload_cuda_libraries()
    return ProviderPlan(resolved, device_id=device_id, use_tf32=use_tf32, strict=providers == "cuda",
                        intra_op_num_threads=intra_op_num_threads)


def session_options(intra_op_num_threads: int | None = None, *, spinning: bool = True) -> Any:
    """SessionOptions: full graph optimisation, ONNX format only, optional intra-op thread count.

    `spinning=False` stops the intra-op threads busy-waiting for work after each run: right when two
    sessions take turns on the same cores (int8 and its fp32 recheck), where one's spinning threads
    would take the cores from the other, and beside CUDA, where the cores belong to the rest of the process.
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


def inference_session(model: bytes | str, providers: Sequence[str], options: Any,
                      provider_options: Sequence[Mapping[str, str]] | None = None) -> Any:
    """An InferenceSession on `model` (bytes or a path), with CPU_DISABLED_OPTIMIZERS off unless CUDA is asked for.

    A CUDA request that falls back keeps CUDA's fusions; `open_with_fallback` therefore reopens such
    sessions CPU-only, which disables them.
    """
    ort = import_onnxruntime()
    disabled = [] if CUDA in providers else list(CPU_DISABLED_OPTIMIZERS)
    extra = {} if provider_options is None else {"provider_options": [dict(o) for o in provider_options]}
    return ort.InferenceSession(model, sess_options=options, providers=list(providers), disabled_optimizers=disabled,
                                **extra)


_NO_LOCALE = re.compile(r"Failed to construct locale with name:([^:\s]+)")


def _locale_hint(error: BaseException) -> str:
    """What to do when a graph's StringNormalizer (lexical.onnx) names a locale this machine lacks, else ""."""
    found = _NO_LOCALE.search(str(error))
    if not found:
        return ""
    return (f" Its text normaliser needs the {found.group(1)} locale, which this machine lacks (`locale -a` lists "
            f"those it has): install or generate {found.group(1)} (glibc 2.35 and later have C.UTF-8 built in).")


class OnnxModel:
    """One InferenceSession on a verified graph (bytes or path); `run` binds IO on CUDA, plain `run` on CPU.

    Thread-safe: ORT sessions allow concurrent `run`; an IO binding is created per call, never shared.
    """

    def __init__(self, name: str, model: bytes | str, providers: Sequence[str], options: Any,
                 required_inputs: Sequence[str], required_outputs: Sequence[str], *,
                 provider_options: Sequence[Mapping[str, str]] | None = None) -> None:
        self.name = name
        self.requested: list[str] = list(providers)
        try:
            self.session = inference_session(model, providers, options, provider_options)
        except Exception as e:  # noqa: BLE001 -- ORT raises its own exception types for malformed graphs
            if CUDA in providers and _opens_on_cpu(model):
                raise CudaSessionError(f"{name}: ONNX Runtime could not open it with CUDA ({first_line(e)})") from None
            raise BundleError(f"{name}: ONNX Runtime could not load it ({first_line(e)}).{_locale_hint(e)}") from None
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        for kind, want, have in (("input", required_inputs, list(self.input_types)),
                                 ("output", required_outputs, self.output_names)):
            absent = [n for n in want if n not in have]
            if absent:
                raise BundleError(f"{name}: the graph has no {kind} {absent} (its {kind}s: {have}).")
        self.providers: list[str] = list(self.session.get_providers())
        self.uses_cuda = CUDA in self.providers
        # Where outputs are bound: "cuda" on the device the session itself reports using (its provider
        # options as ONNX Runtime applied them); None runs plainly.
        self.bind_device: str | None = "cuda" if self.uses_cuda else None
        self.device_id = _session_device_id(self.session) if self.uses_cuda else 0

    @property
    def fell_back(self) -> bool:
        """CUDA was asked for and the session did not get it."""
        return CUDA in self.requested and not self.uses_cuda

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run the graph on CPU arrays; returns the named outputs as numpy arrays."""
        if self.bind_device is None:
            return self.session.run(list(outputs), dict(feeds))
        binding = self.session.io_binding()
        for key, value in feeds.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for key in outputs:
            binding.bind_output(key, self.bind_device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def cuda_shortfall(models: Iterable[OnnxModel]) -> str | None:
    """Which sessions asked for CUDA and did not get it, in one sentence; None when every one got it."""
    missed = [f"{m.name} got {m.providers}" for m in models if m.fell_back]
    return None if not missed else "ONNX Runtime could not use CUDA (" + "; ".join(missed) + ")"


def open_with_fallback(plan: ProviderPlan, build: Callable[[ProviderPlan], _T], *,
                       sessions: Callable[[_T], Iterable[OnnxModel]], warm_up: Callable[[_T], None],
                       discard: Callable[[_T], None]) -> tuple[_T, ProviderPlan]:
    """`build(plan)`, check each session got what it asked for, warm it up; on CPU alone if CUDA fails.

    A CUDA shortfall is a session that could not be opened with CUDA or obtained no CUDA, or a warm-up
    that raised on CUDA (a missing kernel or cuDNN piece, out of memory: they surface at the first run).
    Under a strict plan (providers="cuda") it is a ConfigError naming ONNX Runtime's message; otherwise
    one warning, and everything is built again with `plan.cpu()`: CPU providers and the CPU session
    options (fusions, threads).
    Returns what was built and the plan it was built with.
    """
    try:
        built = build(plan)
    except CudaSessionError as e:
        if not plan.on_cuda:
            raise
        problem = str(e)
    else:
        problem = _checked_on_cuda(plan, built, sessions, warm_up, discard)
        if problem is None:
            return built, plan
        discard(built)
    if plan.strict:
        raise ConfigError(f"providers='cuda' but {problem}; its log above says why. Install textclassify[gpu] "
                          "(onnxruntime-gpu with the CUDA 12 and cuDNN 9 wheels) or load with providers='auto' "
                          "to fall back to the CPU.")
    warnings.warn(f"{problem}; running on CPUExecutionProvider instead.", RuntimeWarning, stacklevel=3)
    cpu = plan.cpu(problem)
    built = build(cpu)
    try:
        warm_up(built)
    except BaseException:
        discard(built)
        raise
    return built, cpu


def _checked_on_cuda(plan: ProviderPlan, built: _T, sessions: Callable[[_T], Iterable[OnnxModel]],
                     warm_up: Callable[[_T], None], discard: Callable[[_T], None]) -> str | None:
    """Warm `built` up; on CUDA first check every session got it. The shortfall in one sentence, or None."""
    try:
        if not plan.on_cuda:
            warm_up(built)
            return None
        problem = cuda_shortfall(sessions(built))
        if problem is not None:
            return problem
        try:
            warm_up(built)
        except TextClassifyError:
            raise
        except Exception as e:  # noqa: BLE001 -- ORT raises its own types (Fail, RuntimeException, ...)
            return f"the first run on CUDA failed: {first_line(e)}"
        return None
    except BaseException:
        discard(built)
        raise


def padded_width(longest: int, multiple: int, cap: int) -> int:
    """`longest` rounded up to a multiple of `multiple`, but not past `cap` (and never below `longest`)."""
    if multiple <= 1:
        return longest
    return max(longest, min(int(math.ceil(longest / multiple)) * multiple, cap))


def warm_up_rows(sample: Sequence[int], rows: int, width: int) -> list[list[int]]:
    """`rows` token rows of exactly `width` ids: `sample`'s first and last id around its inner ids repeated.

    The ids all come from a real encoding, so any vocabulary accepts them.
    """
    if width <= len(sample):
        row = list(sample[: width - 1]) + list(sample[-1:]) if width >= 2 else list(sample[:width])
    else:
        inner = list(sample[1:-1]) or list(sample)
        fill = (inner * (width // len(inner) + 1))[: width - 2]
        row = list(sample[:1]) + fill + list(sample[-1:])
    return [list(row) for _ in range(rows)]


def _opens_on_cpu(model: bytes | str) -> bool:
    """Whether ONNX Runtime opens `model` on the CPU alone (tells a CUDA failure from a malformed graph)."""
    try:
        inference_session(model, [CPU], session_options(1))
    except Exception:  # noqa: BLE001 -- any failure here means the graph itself is the problem
        return False
    return True


def _session_device_id(session: Any) -> int:
    """The CUDA device the session reports in its applied provider options (0 when it says nothing)."""
    try:
        value = session.get_provider_options().get(CUDA, {}).get("device_id", "0")
        return int(value)
    except (AttributeError, TypeError, ValueError):
        return 0
