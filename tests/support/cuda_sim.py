"""CUDA simulated at the ONNX Runtime boundary only, for testing the runtime's CUDA path on a CPU machine.

`SimulatedCudaSession` is a real CPU InferenceSession on the real graph. The only thing simulated is what
onnxruntime-gpu reports on a working GPU: `get_providers()` lists CUDA when CUDA was asked for,
`get_provider_options()` echoes the CUDA options as applied, and IO bindings to "cuda" are recorded
(device type, device id, input shapes) and then made on the CPU. A subclass makes the first CUDA run fail
the way ORT fails on a missing kernel or out of memory. Everything above ORT -- provider plans, variant
choice, fallback, warm-up, padding -- runs unchanged.
"""
from __future__ import annotations

from typing import Any

import onnxruntime as ort
import pytest

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
CUDA_RUN_ERROR = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory"


class BindingLog:
    """What the runtime asked of IO bindings: inputs' shapes and outputs' device placement, per run."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, str, int]] = []
        self.inputs: list[tuple[str, tuple[int, ...]]] = []
        self.created: list[dict[str, Any]] = []  # provider and session options each session was created with


class _RecordingBinding:
    def __init__(self, real: Any, log: BindingLog) -> None:
        self.real, self.log = real, log

    def bind_cpu_input(self, name: str, value: Any) -> None:
        self.log.inputs.append((name, tuple(value.shape)))
        self.real.bind_cpu_input(name, value)

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, *args: Any) -> None:
        self.log.outputs.append((name, device_type, device_id))
        self.real.bind_output(name, "cpu")  # the CPU stands in for the device

    def copy_outputs_to_cpu(self) -> list[Any]:
        return self.real.copy_outputs_to_cpu()


class SimulatedCudaSession(ort.InferenceSession):
    """A CPU session that reports CUDA as onnxruntime-gpu does on a working GPU (see module docstring)."""

    log = BindingLog()

    def __init__(self, path_or_bytes: Any, sess_options: Any = None, providers: Any = None,
                 provider_options: Any = None, **kwargs: Any) -> None:
        self._asked = list(providers or [CPU])
        options = list(provider_options or [{} for _ in self._asked])
        self._cuda_options = dict(options[self._asked.index(CUDA)]) if CUDA in self._asked else {}
        self.log.created.append({"providers": list(self._asked), "cuda_options": dict(self._cuda_options),
                                 "disabled_optimizers": list(kwargs.get("disabled_optimizers", []))})
        super().__init__(path_or_bytes, sess_options=sess_options, providers=[CPU], **kwargs)

    def get_providers(self) -> list[str]:
        return [CUDA, CPU] if CUDA in self._asked else [CPU]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        options = {CPU: {}}
        if CUDA in self._asked:
            options[CUDA] = {"device_id": "0", **self._cuda_options}
        return options

    def io_binding(self) -> Any:
        return _RecordingBinding(super().io_binding(), self.log)

    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> None:
        real = iobinding.real if isinstance(iobinding, _RecordingBinding) else iobinding
        return super().run_with_iobinding(real, run_options)


class FailingCudaSession(SimulatedCudaSession):
    """Gets CUDA, then fails its first run there (as a missing cuDNN piece or out of memory does)."""

    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> None:
        if CUDA in self._asked:
            raise RuntimeError(CUDA_RUN_ERROR)
        return super().run_with_iobinding(iobinding, run_options)


def gpu_build(monkeypatch: pytest.MonkeyPatch, session_class: type | None = SimulatedCudaSession) -> BindingLog:
    """Make onnxruntime claim CUDA (as onnxruntime-gpu does) and, with a session class, give sessions CUDA.

    With `session_class=None` sessions are ORT's own: on this CPU build a CUDA request silently falls back
    to the CPU, exactly what onnxruntime-gpu does without a GPU, CUDA 12 or cuDNN 9.
    """
    import textclassify.runtime.sessions as sessions

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(sessions, "_preloaded", False)
    log = BindingLog()
    if session_class is not None:
        monkeypatch.setattr(session_class, "log", log)
        monkeypatch.setattr(ort, "InferenceSession", session_class)
    return log


CUDA_OPEN_ERROR = "[ONNXRuntimeError] : 1 : FAIL : CUDA failure 101: invalid device ordinal"


class UnopenableCudaSession(SimulatedCudaSession):
    """Cannot be created with CUDA at all (a device id the machine lacks, a CUDA that fails to initialise)."""

    def __init__(self, path_or_bytes: Any, sess_options: Any = None, providers: Any = None,
                 provider_options: Any = None, **kwargs: Any) -> None:
        if CUDA in (providers or []):
            raise RuntimeError(CUDA_OPEN_ERROR)
        super().__init__(path_or_bytes, sess_options, providers, provider_options, **kwargs)
