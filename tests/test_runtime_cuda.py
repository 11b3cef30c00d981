"""The CUDA path on a CPU machine: variant choice, int8 kept off CUDA, provider truth and fallback, device id,
warm-up shape and padding. CUDA is simulated at the ONNX Runtime boundary only (tests/support/cuda_sim.py)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.support.cuda_sim import (
    CPU,
    CUDA,
    CUDA_OPEN_ERROR,
    CUDA_RUN_ERROR,
    FailingCudaSession,
    UnopenableCudaSession,
    gpu_build,
)
from tests.support.data import make_tickets
from tests.support.toy_bundle import read_manifest, write_manifest, write_toy_bundle
from textclassify.runtime import load_bundle
from textclassify.runtime.errors import ConfigError
from textclassify.runtime.variants import choose_variant

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0,
       "score_method": "json", "prompt_version": "v1"}
MAX_LENGTH = 40
TEXTS = [t for t, _ in make_tickets(20, seed=5)] + ["hi", "refund " * 80]
# llm_gate=0.0: every row is answered by the fusion head without the LLM, so no LLM server is needed
NO_LLM = {"llm_gate": 0.0, "cache_dir": None}
VALIDATED_ON_CUDA = {"validated": True, "checked_on": "cuda", "agreement": 1.0}
CHECKED_ON_CPU = {"validated": False, "checked_on": "cpu", "agreement": 1.0}


def _bundle(tmp: Path, tokenizer_json: str, variants: tuple[str, ...], fp16_parity: dict | None = None) -> Path:
    out = tmp / "-".join(("b",) + variants + ((fp16_parity or {}).get("checked_on", "none"),))
    write_toy_bundle(out, tokenizer_json, labels=LABELS, multi_label=False, llm=LLM, max_length=MAX_LENGTH,
                     extra_variants=variants)
    if fp16_parity is not None:
        manifest = read_manifest(out)
        manifest["parity"] = {"fp16": fp16_parity}
        write_manifest(out, manifest)
    return out


@pytest.fixture(scope="module")
def tokenizer_json(tiny_roberta_dir: str) -> str:
    return str(Path(tiny_roberta_dir) / "tokenizer.json")


@pytest.fixture(scope="module")
def fp16_cuda(tokenizer_json: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose fp16 variant passed its parity check on CUDA."""
    return _bundle(tmp_path_factory.mktemp("cuda"), tokenizer_json, ("fp16",), VALIDATED_ON_CUDA)


@pytest.fixture(scope="module")
def fp16_cpu(tokenizer_json: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose fp16 variant was checked on the CPU provider only."""
    return _bundle(tmp_path_factory.mktemp("cpu"), tokenizer_json, ("fp16",), CHECKED_ON_CPU)


@pytest.fixture(scope="module")
def with_int8(tokenizer_json: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory.mktemp("int8"), tokenizer_json, ("int8",))


# --- variant choice (runtime.variants.choose_variant) ---------------------------------------------------------

@pytest.mark.parametrize(("parity", "on_cuda", "want"), [
    (VALIDATED_ON_CUDA, True, "fp16"),
    (CHECKED_ON_CPU, True, "fp32"),
    ({"validated": True, "checked_on": "cpu"}, True, "fp32"),  # a pass on the CPU provider proves nothing on CUDA
    ({"validated": False, "checked_on": "cuda"}, True, "fp32"),
    ({"validated": True, "provider": "CPUExecutionProvider"}, True, "fp32"),  # exported before checked_on
    ({"validated": True, "provider": "CUDAExecutionProvider"}, True, "fp16"),
    ({"validated": "yes", "checked_on": "cuda"}, True, "fp32"),
    (None, True, "fp32"),
    (VALIDATED_ON_CUDA, False, "fp32"),
])
def test_auto_serves_fp16_only_when_validated_on_cuda(parity, on_cuda, want) -> None:
    """auto picks fp16 only on CUDA, and only when parity.fp16 says validated and checked on CUDA."""
    choice = choose_variant("auto", {"fp32", "fp16"}, on_cuda=on_cuda, fp16_parity=parity)
    assert choice.variant == want and choice.cpu_only is False


def test_auto_says_why() -> None:
    """variant_reason names what decided it."""
    assert choose_variant("auto", {"fp32", "fp16"}, on_cuda=True, fp16_parity=CHECKED_ON_CPU).reason == (
        "auto on CUDA serves fp32: the fp16 variant's parity check was run on cpu only, and auto serves fp16 only "
        "when it passed on CUDA (variant='fp16' loads it anyway)")
    assert choose_variant("auto", {"fp32"}, on_cuda=True).reason == (
        "auto on CUDA serves fp32: the bundle has no fp16 variant")
    assert choose_variant("auto", {"fp32", "fp16"}, on_cuda=True, fp16_parity=VALIDATED_ON_CUDA).reason == (
        "auto on CUDA serves fp16: its parity check passed on CUDA")
    assert choose_variant("auto", {"fp32", "int8", "fp16"}, on_cuda=False).reason == (
        "auto on the CPU serves fp32 (int8 only when asked for; fp16 is for CUDA)")


def test_explicit_variants() -> None:
    """An explicit variant is served as asked when the bundle has it; otherwise a ConfigError."""
    assert choose_variant("fp16", {"fp32", "fp16"}, on_cuda=True, fp16_parity=CHECKED_ON_CPU).variant == "fp16"
    assert choose_variant("fp32", {"fp32", "fp16"}, on_cuda=True).variant == "fp32"
    assert choose_variant("int8", {"fp32", "int8"}, on_cuda=False).cpu_only is False
    with pytest.raises(ConfigError) as e:
        choose_variant("fp16", {"fp32", "int8"}, on_cuda=True)
    assert str(e.value) == "variant 'fp16' is not in this bundle (it has ['fp32', 'int8'])."


def test_int8_with_cuda_runs_on_cpu_or_is_refused() -> None:
    """int8 with CUDA requested: CPU only with a warning, or a ConfigError when CUDA was explicit."""
    with pytest.warns(RuntimeWarning, match=r"^int8 runs on the CPU only: its activations are quantised to uint8"):
        choice = choose_variant("int8", {"fp32", "int8"}, on_cuda=True)
    assert choice.variant == "int8" and choice.cpu_only is True
    with pytest.raises(ConfigError) as e:
        choose_variant("int8", {"fp32", "int8"}, on_cuda=True, cuda_explicit=True)
    assert str(e.value) == (
        "variant='int8' with providers='cuda': int8 runs on the CPU only: its activations are quantised to uint8 "
        "and CUDA's MatMulInteger takes int8 only, so each quantised MatMul would fall back to the CPU with a "
        "device copy on either side. Use variant='fp16' or 'fp32' on CUDA, or providers='cpu' for int8.")


# --- load_bundle with CUDA simulated at the ORT boundary -----------------------------------------------------

def test_auto_on_cuda_serves_validated_fp16(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A working GPU and an fp16 validated on CUDA: fp16 on CUDA, outputs bound on the GPU."""
    log = gpu_build(monkeypatch)
    with load_bundle(fp16_cuda, **NO_LLM) as bundle:
        assert (bundle.variant, bundle.providers) == ("fp16", [CUDA, CPU])
        assert bundle.variant_reason == "auto on CUDA serves fp16: its parity check passed on CUDA"
    assert log.outputs and all(device == "cuda" for _, device, _ in log.outputs)


def test_auto_on_cuda_keeps_fp32_when_fp16_only_checked_on_cpu(fp16_cpu: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp16 checked only on the CPU provider is not served by auto, and variant_reason says why."""
    gpu_build(monkeypatch)
    with load_bundle(fp16_cpu, **NO_LLM) as bundle:
        assert (bundle.variant, bundle.providers) == ("fp32", [CUDA, CPU])
        assert "run on cpu only" in bundle.variant_reason


def test_device_id_flows_into_session_and_binding(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """device_id reaches the CUDA provider options and every output binding; arena and TF32 options too."""
    log = gpu_build(monkeypatch)
    with load_bundle(fp16_cuda, device_id=3, **NO_LLM) as bundle:
        bundle.predict_proba(TEXTS[:3])
        assert bundle._model.device_id == 3
    cuda_sessions = [c for c in log.created if CUDA in c["providers"]]
    assert [c["cuda_options"] for c in cuda_sessions] == [
        {"device_id": "3", "arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}]
    assert cuda_sessions[0]["disabled_optimizers"] == []  # CUDA keeps ORT's fusions
    assert log.outputs and {(device, dev_id) for _, device, dev_id in log.outputs} == {("cuda", 3)}


def test_use_tf32_is_passed_when_asked(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """use_tf32=True turns TF32 on for the CUDA session; it is off by default."""
    log = gpu_build(monkeypatch)
    with load_bundle(fp16_cuda, use_tf32=True, **NO_LLM):
        pass
    assert [c["cuda_options"]["use_tf32"] for c in log.created if CUDA in c["providers"]] == ["1"]


def test_cuda_sessions_do_not_spin(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA encoder session runs one intra-op thread without spinning; small graphs stay on the CPU."""
    gpu_build(monkeypatch)
    with load_bundle(fp16_cuda, **NO_LLM) as bundle:
        options = bundle._model.session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert all(g.providers == [CPU] for name, g in bundle._graphs.items() if name != "encoder")


def test_warm_up_runs_the_largest_shape_on_cuda(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA, warm-up runs (batch_size, max_length) once, so the first request finds the arena grown."""
    log = gpu_build(monkeypatch)
    with load_bundle(fp16_cuda, batch_size=5, **NO_LLM):
        assert log.inputs == [("input_ids", (5, MAX_LENGTH)), ("attention_mask", (5, MAX_LENGTH))]


def test_padding_rounds_up_to_eight_on_cuda(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA every padded width is a multiple of 8 or max_length; the answers equal the CPU's."""
    with load_bundle(fp16_cuda, providers="cpu", batch_size=4, **NO_LLM) as bundle:
        on_cpu = bundle.predict_proba(TEXTS)
    log = gpu_build(monkeypatch)
    with load_bundle(fp16_cuda, batch_size=4, **NO_LLM) as bundle:
        log.inputs.clear()
        on_cuda = bundle.predict_proba(TEXTS)
    widths = [shape[1] for name, shape in log.inputs if name == "input_ids"]
    assert len(widths) == 6 and all(w % 8 == 0 or w == MAX_LENGTH for w in widths)
    assert MAX_LENGTH in widths  # the truncated text is padded to max_length, not past it
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-6)


def test_int8_with_cuda_opens_on_cpu(with_int8: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """variant='int8' under auto on a GPU: the encoder opens on CPU alone, with one warning."""
    log = gpu_build(monkeypatch)
    with pytest.warns(RuntimeWarning, match=r"^int8 runs on the CPU only") as caught:
        with load_bundle(with_int8, variant="int8", **NO_LLM) as bundle:
            assert (bundle.variant, bundle.providers) == ("int8", [CPU])
            assert bundle.variant_reason.startswith("int8 runs on the CPU only")
    assert len(caught) == 1 and all(CUDA not in c["providers"] for c in log.created)


def test_int8_with_explicit_cuda_is_refused(with_int8: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """variant='int8' with providers='cuda' is a ConfigError before any session opens."""
    log = gpu_build(monkeypatch)
    with pytest.raises(ConfigError, match=r"^variant='int8' with providers='cuda': int8 runs on the CPU only"):
        load_bundle(with_int8, variant="int8", providers="cuda", **NO_LLM)
    assert log.created == []


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_silent_fallback_reopens_everything_on_cpu(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu without a usable GPU builds CPU sessions silently: auto warns once and reopens every
    session CPU-only with the CPU options; fp16 (a CUDA variant) gives way to fp32."""
    gpu_build(monkeypatch, session_class=None)  # ORT's own sessions: a CUDA request falls back to CPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load_bundle(fp16_cuda, **NO_LLM)
    ours = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert ours == ["ONNX Runtime could not use CUDA (encoder.fp16.onnx got ['CPUExecutionProvider']); running on "
                    "CPUExecutionProvider instead."]
    with bundle:
        assert (bundle.variant, bundle.providers) == ("fp32", [CPU])
        assert all(s.requested == [CPU] for s in bundle._sessions())  # reopened CPU-only: CPU fusions, CPU options
        options = bundle._model.session.get_session_options()
        assert options.intra_op_num_threads == 0  # ORT's default again, not the CUDA session's single thread
        assert bundle.variant_reason == ("auto on the CPU serves fp32 (int8 only when asked for; fp16 is for CUDA) "
                                         "(ONNX Runtime could not use CUDA (encoder.fp16.onnx got "
                                         "['CPUExecutionProvider']))")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_silent_fallback_under_explicit_cuda_raises(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """providers='cuda' and no usable CUDA: ConfigError naming the session and what it got."""
    gpu_build(monkeypatch, session_class=None)
    with pytest.raises(ConfigError) as e:
        load_bundle(fp16_cuda, providers="cuda", **NO_LLM)
    assert str(e.value) == (
        "providers='cuda' but ONNX Runtime could not use CUDA (encoder.fp16.onnx got ['CPUExecutionProvider']); "
        "its log above says why. Install textclassify[gpu] (onnxruntime-gpu with the CUDA 12 and cuDNN 9 wheels) "
        "or load with providers='auto' to fall back to the CPU.")


def test_failed_first_cuda_run_falls_back_under_auto(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm-up that fails on CUDA (missing kernel, out of memory) falls back to CPU under auto."""
    gpu_build(monkeypatch, FailingCudaSession)
    with pytest.warns(RuntimeWarning) as caught:
        bundle = load_bundle(fp16_cuda, **NO_LLM)
    assert [str(w.message) for w in caught] == [
        f"the first run on CUDA failed: {CUDA_RUN_ERROR}; running on CPUExecutionProvider instead."]
    with bundle:
        assert (bundle.variant, bundle.providers) == ("fp32", [CPU])
        assert bundle.predict_proba(TEXTS[:2]).shape == (2, len(LABELS))


def test_failed_first_cuda_run_raises_under_cuda(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure under providers='cuda' is a ConfigError with ORT's message."""
    gpu_build(monkeypatch, FailingCudaSession)
    with pytest.raises(ConfigError) as e:
        load_bundle(fp16_cuda, providers="cuda", **NO_LLM)
    assert str(e.value).startswith(f"providers='cuda' but the first run on CUDA failed: {CUDA_RUN_ERROR}; ")


def test_session_that_cannot_open_on_cuda(fp16_cuda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that opens on the CPU but not with CUDA (say, a device id the machine lacks) is a CUDA
    shortfall, not a broken bundle: auto falls back with a warning, cuda is a ConfigError."""
    gpu_build(monkeypatch, UnopenableCudaSession)
    with pytest.warns(RuntimeWarning) as caught:
        bundle = load_bundle(fp16_cuda, device_id=7, **NO_LLM)
    assert [str(w.message) for w in caught] == [
        f"encoder.fp16.onnx: ONNX Runtime could not open it with CUDA ({CUDA_OPEN_ERROR}); running on "
        "CPUExecutionProvider instead."]
    with bundle:
        assert (bundle.variant, bundle.providers) == ("fp32", [CPU])
    with pytest.raises(ConfigError) as e:
        load_bundle(fp16_cuda, providers="cuda", device_id=7, **NO_LLM)
    assert str(e.value).startswith(
        f"providers='cuda' but encoder.fp16.onnx: ONNX Runtime could not open it with CUDA ({CUDA_OPEN_ERROR}); ")


def test_device_id_checked(fp16_cuda: Path) -> None:
    """device_id and use_tf32 are checked like every other argument."""
    with pytest.raises(ConfigError, match=r"^'device_id' must be an int >= 0 \(got -1\)\.$"):
        load_bundle(fp16_cuda, device_id=-1, **NO_LLM)
    with pytest.raises(ConfigError, match=r"^'use_tf32' must be True or False \(got 1\)\.$"):
        load_bundle(fp16_cuda, use_tf32=1, **NO_LLM)


def test_cli_device_id_reaches_the_binding(fp16_cuda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fusion-predict --device-id 2 binds every CUDA output on device 2 and reports why it chose its variant."""
    import json

    from click.testing import CliRunner

    from textclassify.runtime.predict_cli import main

    log = gpu_build(monkeypatch)
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(f"ticket {i} about my invoice" for i in range(3)) + "\n")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(main, ["--bundle", str(fp16_cuda), "--input", str(tmp_path / "in.csv"), "--output",
                                       str(out), "--device-id", "2", "--on-llm-error", "ml_only",
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert log.outputs and {(device, dev_id) for _, device, dev_id in log.outputs} == {("cuda", 2)}
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text())
    assert summary["variant"] == "fp16" and summary["variant_reason"] == (
        "auto on CUDA serves fp16: its parity check passed on CUDA")
