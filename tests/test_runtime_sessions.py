"""runtime.sessions: provider lists, session options, IO binding and the missing-onnxruntime message."""
from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.toy_bundle import build_calibrator, build_encoder, toy_weights
from textclassify.runtime.errors import BundleError, ConfigError, MissingDependencyError
from textclassify.runtime.sessions import (
    CUDA_INTRA_OP_THREADS,
    OnnxModel,
    ProviderPlan,
    import_onnxruntime,
    inference_session,
    padded_width,
    plan_providers,
    resolve_providers,
    session_options,
    warm_up_rows,
)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def test_cpu_and_auto_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """'cpu' is CPU alone; 'auto' is CPU alone where onnxruntime offers no CUDA."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers("auto") == [CPU]


def test_auto_prefers_cuda_when_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """With onnxruntime-gpu's provider list, 'auto' and 'cuda' put CUDA first and end in CPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", CUDA, CPU])
    assert resolve_providers("auto") == [CUDA, CPU]
    assert resolve_providers("cuda") == [CUDA, CPU]
    assert resolve_providers([CPU, CUDA]) == [CUDA, CPU]


def test_cuda_unavailable_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    """providers='cuda' on a CPU-only onnxruntime says to install the gpu extra."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    with pytest.raises(ConfigError) as e:
        resolve_providers("cuda")
    assert str(e.value) == ("providers='cuda' but this onnxruntime offers no CUDAExecutionProvider (available: "
                            "['AzureExecutionProvider', 'CPUExecutionProvider']); install textclassify[gpu] "
                            "(onnxruntime-gpu) instead of textclassify[cpu].")


def test_explicit_list_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit list keeps its order, always ends in CPU, and refuses providers not available."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", CPU])
    assert resolve_providers(["OpenVINOExecutionProvider"]) == ["OpenVINOExecutionProvider", CPU]
    with pytest.raises(ConfigError, match=r"^providers \['ROCMExecutionProvider'\] are not available"):
        resolve_providers(["ROCMExecutionProvider", CPU])
    with pytest.raises(ConfigError, match=r"^'providers' must be 'auto', 'cpu', 'cuda' or a non-empty list"):
        resolve_providers([])


def test_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime the error names both extras."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError) as e:
        import_onnxruntime()
    assert str(e.value) == ("onnxruntime is not installed; install textclassify[cpu] (pip install "
                            "'textclassify[cpu]') or, on a CUDA machine, textclassify[gpu] -- never both.")


def test_session_options() -> None:
    """Full graph optimisation; intra-op threads only when given."""
    opts = session_options(2)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == 2
    assert session_options().intra_op_num_threads == 0  # 0 = onnxruntime's default


ENCODER_IN, ENCODER_OUT = ["input_ids", "attention_mask"], ["ml_logits"]


def _toy_model() -> OnnxModel:
    w = toy_weights(50, 3)
    return OnnxModel("encoder.onnx", build_encoder(w).SerializeToString(), [CPU], session_options(1),
                     ENCODER_IN, ENCODER_OUT)


def test_model_reports_providers_in_use() -> None:
    """providers come from the session, not from the request."""
    model = _toy_model()
    assert model.providers == [CPU] and model.uses_cuda is False and model.bind_device is None


def test_io_binding_path_equals_plain_run() -> None:
    """The IO-binding path (bound to CPU here, to CUDA on a GPU) returns what plain run returns."""
    model = _toy_model()
    feeds = {"input_ids": np.array([[0, 5, 7, 2], [0, 9, 2, 1]], np.int64),
             "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)}
    plain = model.run(feeds, ENCODER_OUT)
    model.bind_device = "cpu"
    bound = model.run(feeds, ENCODER_OUT)
    for a, b in zip(plain, bound):
        np.testing.assert_array_equal(a, b)


def test_graph_contract_checked() -> None:
    """A graph lacking the manifest's inputs is a BundleError naming the file and what it has."""
    with pytest.raises(BundleError) as e:
        OnnxModel("calibrator.onnx", build_calibrator(3, 1.0).SerializeToString(), [CPU], session_options(),
                  ["llm_scores_raw"], ["calibrated"])
    assert str(e.value) == "calibrator.onnx: the graph has no output ['calibrated'] (its outputs: ['llm_scores'])."


def test_unparseable_graph() -> None:
    """Bytes that are not an ONNX model are a BundleError, not an onnxruntime traceback."""
    with pytest.raises(BundleError, match=r"^encoder.onnx: ONNX Runtime could not load it \("):
        OnnxModel("encoder.onnx", b"not a model at all", [CPU], session_options(), ENCODER_IN, ENCODER_OUT)


def test_missing_locale_is_named_with_what_to_do() -> None:
    """lexical.onnx's StringNormalizer needs its locale on the serving machine; without it the error says so."""
    from onnx import TensorProto, helper

    node = helper.make_node("StringNormalizer", ["text"], ["folded"], case_change_action="LOWER",
                            locale="xx_XX.UTF-8")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
                              [helper.make_tensor_value_info("folded", TensorProto.STRING, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(BundleError) as e:
        OnnxModel("lexical.onnx", model, [CPU], session_options(), ["text"], ["folded"])
    message = str(e.value)
    assert message.startswith("lexical.onnx: ONNX Runtime could not load it (")
    assert message.endswith("Its text normaliser needs the xx_XX.UTF-8 locale, which this machine lacks (`locale -a` "
                            "lists those it has): install or generate xx_XX.UTF-8 (glibc 2.35 and later have C.UTF-8 "
                            "built in).")


def _add_then_layer_norm() -> bytes:
    """Add + LayerNormalization: the pattern ONNX Runtime fuses into SkipLayerNormalization."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = 8
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", hidden]) for n in ("x", "skip", "out")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["sum"]),
         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["out"], axis=-1, epsilon=1e-5)],
        "skip_ln", io[:2], io[2:],
        [numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
         numpy_helper.from_array(np.zeros(hidden, np.float32), "beta")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _optimised_ops(tmp_path, name: str, open_session) -> list[str]:
    import onnx

    options = session_options()
    options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
    open_session(options)
    return [n.op_type for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node]


def test_cpu_sessions_leave_skip_layer_norm_unfused(tmp_path) -> None:
    """ORT alone fuses Add + LayerNormalization on CPU; the runtime's CPU sessions do not (the kernel is slower)."""
    model = _add_then_layer_norm()
    plain = _optimised_ops(tmp_path, "ort", lambda o: ort.InferenceSession(model, sess_options=o, providers=[CPU]))
    ours = _optimised_ops(tmp_path, "ours", lambda o: inference_session(model, [CPU], o))
    assert plain == ["SkipLayerNormalization"]
    assert ours == ["Add", "LayerNormalization"]


def test_plan_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA plan: CUDA's options, then CPU's (none); strict only under 'cuda'; CUDA libraries preloaded once."""
    import textclassify.runtime.sessions as sessions

    calls = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append(1), raising=False)
    monkeypatch.setattr(sessions, "_preloaded", False)
    auto = plan_providers("auto", device_id=1)
    strict = plan_providers("cuda", use_tf32=True)
    assert (auto.providers, auto.strict, strict.strict) == ((CUDA, CPU), False, True)
    assert auto.provider_options() == [{"device_id": "1", "arena_extend_strategy": "kSameAsRequested",
                                        "use_tf32": "0"}, {}]
    assert strict.cuda_options()["use_tf32"] == "1"
    assert calls == [1]
    assert plan_providers("cpu").providers == (CPU,) and len(calls) == 1


def test_plan_session_options() -> None:
    """CUDA plans run CUDA_INTRA_OP_THREADS threads without spinning; the CPU plan keeps the caller's choice."""
    cuda = ProviderPlan((CUDA, CPU), intra_op_num_threads=None)
    options = cuda.session_options()
    assert options.intra_op_num_threads == CUDA_INTRA_OP_THREADS
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    cpu = ProviderPlan((CUDA, CPU), intra_op_num_threads=2).cpu("why")
    assert (cpu.providers, cpu.fallback, cpu.session_options().intra_op_num_threads) == ((CPU,), "why", 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device_id": -1}, "'device_id' must be an int >= 0 (got -1)."),
    ({"device_id": True}, "'device_id' must be an int >= 0 (got True)."),
    ({"use_tf32": "no"}, "'use_tf32' must be True or False (got 'no')."),
])
def test_plan_arguments_checked(kwargs, message) -> None:
    """device_id and use_tf32 are checked before any session opens."""
    with pytest.raises(ConfigError) as e:
        plan_providers("cpu", **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize(("longest", "multiple", "cap", "want"), [
    (5, 8, 64, 8), (8, 8, 64, 8), (9, 8, 64, 16), (61, 8, 64, 64), (63, 8, 60, 63), (5, 1, 64, 5), (0, 8, 64, 0),
])
def test_padded_width(longest, multiple, cap, want) -> None:
    """Rounded up to the multiple, capped at max_length, never below the longest row."""
    assert padded_width(longest, multiple, cap) == want


def test_warm_up_rows() -> None:
    """Rows of exactly `width` ids, first and last id kept, the inner ones repeated."""
    assert warm_up_rows([0, 7, 9, 2], 2, 8) == [[0, 7, 9, 7, 9, 7, 9, 2]] * 2
    assert warm_up_rows([0, 7, 9, 2], 1, 3) == [[0, 7, 2]]
    assert warm_up_rows([0, 2], 1, 4) == [[0, 0, 2, 2]]


def test_fallback_leaves_bundle_errors_alone() -> None:
    """A BundleError at warm-up (a wrong output shape) is raised as it is, not taken for a CUDA failure;
    what was built is discarded."""
    from textclassify.runtime.sessions import open_with_fallback

    discarded = []

    def warm_up(built: object) -> None:
        raise BundleError("encoder.onnx: output has shape (1, 2); expected (1, 3)")

    with pytest.raises(BundleError, match=r"^encoder.onnx: output has shape"):
        open_with_fallback(ProviderPlan((CUDA, CPU)), lambda plan: plan, sessions=lambda b: [], warm_up=warm_up,
                           discard=discarded.append)
    assert discarded == [ProviderPlan((CUDA, CPU))]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_broken_graph_asked_on_cuda_is_still_a_bundle_error() -> None:
    """A graph that ONNX Runtime cannot open on the CPU either is the bundle's fault, not CUDA's."""
    with pytest.raises(BundleError, match=r"^encoder.onnx: ONNX Runtime could not load it \("):
        OnnxModel("encoder.onnx", b"not a model at all", [CUDA, CPU], session_options(), ENCODER_IN, ENCODER_OUT)
