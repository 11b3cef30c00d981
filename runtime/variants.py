"""Which encoder variant a bundle serves (fp32, int8 or fp16), and why.

- fp16 is a CUDA variant. `auto` picks it only when the export's fp16 parity check passed *on CUDA*
  (`parity.fp16.validated` and `checked_on == "cuda"`). ONNX Runtime's CPU provider has no fp16 kernels
  for most of these ops: it casts the weights back and computes in fp32, so a check run there measures
  weight rounding, not the fp16 arithmetic CUDA does.
- int8 is a CPU variant: its activations are quantised to uint8, and CUDA's MatMulInteger takes int8
  only, so every quantised MatMul would run on the CPU with a device copy on each side. With CUDA
  requested, int8 opens on the CPU alone and says so, or is refused when providers="cuda" was explicit.
- Otherwise `auto` is fp32; int8 is served only when asked for (it trades accuracy for CPU speed).
"""
from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from textclassify.runtime.errors import ConfigError

VARIANT_CHOICES = ("auto", "fp32", "int8", "fp16")


@dataclass(frozen=True)
class VariantChoice:
    """The variant to open, the reason in one sentence (`Bundle.variant_reason`), and whether it runs on CPU
    alone although CUDA was requested (int8)."""

    variant: str
    reason: str
    cpu_only: bool = False


def fp16_checked_on(fp16_parity: Mapping[str, Any] | None) -> str | None:
    """Where the export checked the fp16 graph ("cuda", "cpu"), or None when the manifest does not say."""
    if not isinstance(fp16_parity, Mapping):
        return None
    where = fp16_parity.get("checked_on")
    if isinstance(where, str):
        return where
    # bundles exported before `checked_on` record the provider the check's session got
    return {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}.get(fp16_parity.get("provider"))


def fp16_validated_on_cuda(fp16_parity: Mapping[str, Any] | None) -> bool:
    """True only when the manifest's fp16 parity entry says validated, and checked on CUDA."""
    return (isinstance(fp16_parity, Mapping) and fp16_parity.get("validated") is True
            and fp16_checked_on(fp16_parity) == "cuda")


def choose_variant(requested: str, available: Collection[str], *, on_cuda: bool, cuda_explicit: bool = False,
                   fp16_parity: Mapping[str, Any] | None = None) -> VariantChoice:
    """The variant to serve for `requested` ("auto" | "fp32" | "int8" | "fp16").

    `available`: the bundle's variants; `on_cuda`: CUDA is among the providers the sessions will ask for;
    `cuda_explicit`: the caller said providers="cuda"; `fp16_parity`: the manifest's parity entry for fp16.
    An int8 choice with CUDA requested (not explicitly) warns once, with the reason.
    """
    if requested not in VARIANT_CHOICES:
        raise ConfigError(f"'variant' must be one of {list(VARIANT_CHOICES)} (got {requested!r}).")
    if requested == "auto":
        return _auto(available, on_cuda, fp16_parity)
    if requested not in available:
        raise ConfigError(f"variant {requested!r} is not in this bundle (it has {sorted(available)}).")
    if requested == "int8":
        return _int8(on_cuda, cuda_explicit)
    if requested == "fp16":
        if not on_cuda:
            return VariantChoice("fp16", "fp16 as requested, on the CPU: ONNX Runtime's CPU provider casts most "
                                         "fp16 weights back to fp32, so expect no speed-up there")
        if not fp16_validated_on_cuda(fp16_parity):
            return VariantChoice("fp16", f"fp16 as requested; its parity check was {_fp16_status(fp16_parity)}, "
                                         "not passed on CUDA")
        return VariantChoice("fp16", "fp16 as requested; its parity check passed on CUDA")
    return VariantChoice("fp32", "fp32 as requested")


def _auto(available: Collection[str], on_cuda: bool, fp16_parity: Mapping[str, Any] | None) -> VariantChoice:
    if not on_cuda:
        return VariantChoice("fp32", "auto on the CPU serves fp32 (int8 only when asked for; fp16 is for CUDA)")
    if "fp16" not in available:
        return VariantChoice("fp32", "auto on CUDA serves fp32: the bundle has no fp16 variant")
    if not fp16_validated_on_cuda(fp16_parity):
        return VariantChoice("fp32", f"auto on CUDA serves fp32: the fp16 variant's parity check was "
                                     f"{_fp16_status(fp16_parity)}, and auto serves fp16 only when it passed on "
                                     "CUDA (variant='fp16' loads it anyway)")
    return VariantChoice("fp16", "auto on CUDA serves fp16: its parity check passed on CUDA")


def _int8(on_cuda: bool, cuda_explicit: bool) -> VariantChoice:
    why = ("int8 runs on the CPU only: its activations are quantised to uint8 and CUDA's MatMulInteger takes "
           "int8 only, so each quantised MatMul would fall back to the CPU with a device copy on either side")
    if not on_cuda:
        return VariantChoice("int8", "int8 as requested, on the CPU")
    if cuda_explicit:
        raise ConfigError(f"variant='int8' with providers='cuda': {why}. Use variant='fp16' or 'fp32' on CUDA, "
                          "or providers='cpu' for int8.")
    reason = f"{why}; CUDA is not used for this bundle"
    warnings.warn(reason, RuntimeWarning, stacklevel=3)
    return VariantChoice("int8", reason, cpu_only=True)


def _fp16_status(fp16_parity: Mapping[str, Any] | None) -> str:
    """How the manifest describes the fp16 check, in a few words."""
    if not isinstance(fp16_parity, Mapping):
        return "not recorded"
    where = fp16_checked_on(fp16_parity)
    if where is None:
        return "run on an unrecorded provider"
    if fp16_parity.get("validated") is True:
        return f"passed on {where}"
    return f"run on {where} only" if where != "cuda" else "failed on cuda"


def fp16_parity_entry(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The manifest's `parity.fp16` block (the raw manifest JSON), or None when it has none."""
    parity = manifest.get("parity")
    entry = parity.get("fp16") if isinstance(parity, Mapping) else None
    return entry if isinstance(entry, Mapping) else None
