"""serve.protocol and serve.settings in-process: tritonclient's own encoder and decoder against ours."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from textclassify.runtime.errors import ConfigError
from textclassify.serve import protocol as P
from textclassify.serve.batcher import RowAnswer
from textclassify.serve.settings import ServeSettings, parse_size


def _row(label, probs, degraded=None) -> RowAnswer:
    return RowAnswer(label, np.asarray(probs, np.float32), degraded, False, 1, {})


def _client_request(texts: list[str], binary: bool, outputs: list | None = None) -> tuple[bytes, str | None]:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    body, json_size = _get_inference_request([tensor], "id-9", outputs, 0, False, False, 0, None, None)
    return body, None if json_size is None else str(json_size)


@pytest.mark.parametrize("binary", [True, False])
def test_parse_what_tritonclient_sends(binary: bool) -> None:
    """Texts with non-ASCII, empty and comma-holding strings survive tritonclient's encoding both ways."""
    texts = ["héllo wörld", "", "a, b", "日本語"]
    body, header = _client_request(texts, binary)
    parsed = P.parse_infer(body, header, max_texts=10)
    assert parsed.texts == texts and parsed.request_id == "id-9"
    assert parsed.outputs == dict.fromkeys(P.OUTPUTS, True)  # no outputs named: binary_data_output


def test_encode_is_what_tritonclient_reads() -> None:
    """Our binary response, decoded by tritonclient's InferResult, gives the rows back exactly."""
    rows = [_row("billing", [0.7, 0.2, 0.1]), _row("shipping", [0.1, 0.8, 0.1], degraded="LLM down")]
    request = P.InferRequest(["a", "b"], "r", dict.fromkeys(P.OUTPUTS, True))
    body, headers = P.encode_infer("m", request, rows, 3, multi_label=False)
    result = triton.InferResult.from_response_body(body, header_length=int(headers["Inference-Header-Content-Length"]))
    assert result.as_numpy("label").tolist() == [b"billing", b"shipping"]
    np.testing.assert_array_equal(result.as_numpy("probabilities").reshape(2, 3),
                                  np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], np.float32))
    assert result.as_numpy("degraded").tolist() == [False, True]


def test_encode_json_outputs_and_empty() -> None:
    """JSON outputs carry flat data; zero rows give shape [0, C]; multi-label joins with commas."""
    request = P.InferRequest([], None, {"label": False, "probabilities": False})
    body, headers = P.encode_infer("m", request, [], 3, multi_label=True)
    out = json.loads(body)
    assert headers == {} and out["outputs"][1]["shape"] == [0, 3] and "id" not in out
    rows = [_row(["a", "b"], [0.9, 0.8, 0.1])]
    body, _ = P.encode_infer("m", P.InferRequest(["x"], None, {"label": False}), rows, 3, multi_label=True)
    assert json.loads(body)["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["a,b"]}]


def test_classification_extension_refused() -> None:
    """tritonclient's class_count asks for an extension we do not implement: 400 naming it."""
    outputs = [triton.InferRequestedOutput("probabilities", class_count=2)]
    body, header = _client_request(["a"], True, outputs)
    with pytest.raises(P.ProtocolError, match="classification extension is not supported"):
        P.parse_infer(body, header, max_texts=10)


def test_decompress_limits_inflation() -> None:
    """gzip and deflate bodies inflate; past the limit is PayloadTooLargeError; junk is ProtocolError."""
    import gzip
    import zlib

    assert P.decompress(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100
    assert P.decompress(zlib.compress(b"y" * 10), "deflate", 100) == b"y" * 10
    with pytest.raises(P.PayloadTooLargeError, match=r"over max_request_bytes \(99 bytes\)"):
        P.decompress(gzip.compress(b"x" * 100), "gzip", 99)
    with pytest.raises(P.ProtocolError, match="does not decompress"):
        P.decompress(b"not gzip", "gzip", 100)
    with pytest.raises(P.ProtocolError, match="expected gzip, deflate or identity"):
        P.decompress(b"x", "br", 100)


@pytest.mark.parametrize(("text", "size"), [("4MiB", 4 * 1024**2), ("512kb", 512_000), ("1000", 1000),
                                            ("1.5KiB", 1536), (77, 77)])
def test_parse_size(text, size: int) -> None:
    """Binary units for *iB, decimal for *B, plain numbers are bytes."""
    assert parse_size(text) == size


def test_settings_checks_and_repr_hides_token() -> None:
    """Bad limits are ConfigErrors naming the field; the token never shows in a repr."""
    with pytest.raises(ConfigError, match="'max_queue' must be a positive int"):
        ServeSettings(max_queue=0)
    with pytest.raises(ConfigError, match="expected a size such as 4MiB"):
        parse_size("lots")
    settings = ServeSettings(token="hunter2-token")
    assert "hunter2" not in repr(settings) and "token=<set>" in repr(settings)
