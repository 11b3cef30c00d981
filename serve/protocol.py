"""Request parsing and response encoding for the Open Inference Protocol (KServe v2) and the plain endpoint.

The v2 side follows the protocol as Triton speaks it, with Triton's binary tensor data extension (which
tritonclient uses by default): a JSON header of `Inference-Header-Content-Length` bytes, then each binary
tensor in order; a BYTES element is a little-endian uint32 length followed by that many bytes.
"""
from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textclassify.serve.batcher import RowAnswer

INPUT_NAME = "text"
OUTPUTS = {"label": "BYTES", "probabilities": "FP32", "degraded": "BOOL"}
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(Exception):
    """A malformed request (400); the message names the field."""


class PayloadTooLargeError(Exception):
    """A request over a size limit (413); the message names the limit."""


@dataclass(frozen=True)
class InferRequest:
    """What a v2 infer request asks for: its texts, id, and which outputs (name -> binary?)."""

    texts: list[str]
    request_id: str | None
    outputs: dict[str, bool]


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate); never inflates past `limit` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    kind = encoding.lower()
    if kind not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding: expected gzip, deflate or identity (got {encoding!r}).")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ProtocolError(f"Content-Encoding {kind}: the body does not decompress ({e}).") from None
    if len(out) > limit:
        raise PayloadTooLargeError(f"the decompressed request is over max_request_bytes ({limit} bytes).")
    return out


def parse_infer(body: bytes, header_length: str | None, max_texts: int) -> InferRequest:
    """Texts and requested outputs of a v2 infer request; ProtocolError naming the field when malformed."""
    json_part, binary = _split(body, header_length)
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"request body: not valid JSON ({e}).") from None
    if not isinstance(request, dict):
        raise ProtocolError(f"request body: expected a JSON object (got {type(request).__name__}).")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id: expected a string.")
    params = _parameters(request.get("parameters"), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"inputs: expected a non-empty list with the input '{INPUT_NAME}'.")
    texts: list[str] | None = None
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise ProtocolError(f"{where}: expected an object with name, shape, datatype and data.")
        name = tensor.get("name")
        if name != INPUT_NAME:
            raise ProtocolError(f"{where}.name: the model has one input, '{INPUT_NAME}' (got {name!r}).")
        if texts is not None:
            raise ProtocolError(f"{where}.name: input '{INPUT_NAME}' given twice.")
        if tensor.get("datatype") != "BYTES":
            raise ProtocolError(f"{where}.datatype: '{INPUT_NAME}' is BYTES (got {tensor.get('datatype')!r}).")
        count = _count(tensor.get("shape"), f"{where}.shape")
        if count > max_texts:
            raise PayloadTooLargeError(f"{count} texts is more than max_texts ({max_texts}).")
        size = _parameters(tensor.get("parameters"), f"{where}.parameters").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"{where}.parameters.binary_data_size: {size!r} does not fit the "
                                    f"{len(binary) - offset} binary bytes left in the request.")
            texts = _decode_bytes_tensor(binary[offset:offset + size], count, where)
            offset += size
        else:
            texts = _json_texts(tensor.get("data"), count, where)
    if offset != len(binary):
        raise ProtocolError(f"request body: {len(binary) - offset} binary bytes after the JSON header belong to "
                            "no input's binary_data_size.")
    default_binary = bool(params.get("binary_data_output", False))
    outputs = _requested_outputs(request.get("outputs"), default_binary)
    if params.get("classification") or any(
            "classification" in _parameters(o.get("parameters"), "outputs").keys()
            for o in request.get("outputs") or [] if isinstance(o, dict)):
        raise ProtocolError("outputs.parameters.classification: the classification extension is not supported; "
                            "read 'label' and 'probabilities' instead.")
    assert texts is not None
    return InferRequest(texts, request_id, outputs)


def encode_infer(model: str, request: InferRequest, rows: Sequence[RowAnswer], n_labels: int,
                 multi_label: bool) -> tuple[bytes, dict[str, str]]:
    """The v2 infer response body and its extra headers (Inference-Header-Content-Length with binary outputs)."""
    n = len(rows)
    labels = [",".join(r.prediction) if multi_label else str(r.prediction) for r in rows]
    probs = np.stack([r.probabilities for r in rows]).astype("<f4") if n else np.zeros((0, n_labels), "<f4")
    tensors = {
        "label": ([n], labels),
        "probabilities": (list(probs.shape), probs),
        "degraded": ([n], [r.degraded is not None for r in rows]),
    }
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        shape, value = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": shape}
        if binary:
            blob = _binary(name, value)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else list(value)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.request_id is not None:
        response["id"] = request.request_id
    header = json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode()
    if not blobs:
        return header, {}
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def model_metadata(name: str, labels: Sequence[str], multi_label: bool, extra: Mapping[str, Any]) -> dict[str, Any]:
    """GET /v2/models/{name}: inputs, outputs and, in parameters, the labels (a JSON list as a string)."""
    parameters = {"labels": json.dumps(list(labels), ensure_ascii=False), "multi_label": multi_label, **extra}
    return {
        "name": name, "versions": ["1"], "platform": "textclassify_bundle",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
                    {"name": "degraded", "datatype": "BOOL", "shape": [-1]}],
        "parameters": parameters,
    }


def parse_plain(body: bytes, max_texts: int) -> list[str]:
    """The texts of a plain request {"texts": [...]}; ProtocolError naming the field when malformed."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"request body: not valid JSON ({e}).") from None
    if not isinstance(request, dict) or "texts" not in request:
        raise ProtocolError('request body: expected a JSON object {"texts": [...]}.')
    unknown = sorted(set(request) - {"texts"})
    if unknown:
        raise ProtocolError(f"{unknown[0]}: unknown field; the request has one field, 'texts'.")
    texts = request["texts"]
    if not isinstance(texts, list):
        raise ProtocolError(f"texts: expected a list of strings (got {type(texts).__name__}).")
    if len(texts) > max_texts:
        raise PayloadTooLargeError(f"{len(texts)} texts is more than max_texts ({max_texts}).")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ProtocolError(f"texts[{i}]: expected a string (got {type(text).__name__}).")
    return texts


def plain_response(rows: Sequence[RowAnswer], labels: Sequence[str], usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "predictions": [r.prediction for r in rows],
        "probabilities": [[float(p) for p in r.probabilities] for r in rows],
        "labels": list(labels),
        "degraded": [i for i, r in enumerate(rows) if r.degraded is not None],
        "degraded_reasons": {str(i): r.degraded for i, r in enumerate(rows) if r.degraded is not None},
        "llm_skipped": [i for i, r in enumerate(rows) if r.llm_skipped],
        "usage": {"texts": len(rows), "batches": len({r.batch for r in rows}), "llm": dict(usage)},
    }


# -- helpers ---------------------------------------------------------------------------------------
def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length: expected an integer (got {header_length!r}).") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length: {n} is outside the body's {len(body)} bytes.")
    return body[:n], body[n:]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected an object.")
    return value


def _count(shape: Any, where: str) -> int:
    """Rows in a [N] or [N, 1] shape (both are how clients send a batch of strings)."""
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise ProtocolError(f"{where}: expected [N] (or [N, 1]) with N >= 0 (got {shape!r}).")
    return shape[0]


def _decode_bytes_tensor(blob: bytes, count: int, where: str) -> list[str]:
    texts, pos = [], 0
    for i in range(count):
        if pos + 4 > len(blob):
            raise ProtocolError(f"{where}: binary data ends before element {i} of the shape's {count}.")
        (length,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + length > len(blob):
            raise ProtocolError(f"{where}: element {i} says {length} bytes but {len(blob) - pos} are left.")
        texts.append(_utf8(blob[pos:pos + length], f"{where}[{i}]"))
        pos += length
    if pos != len(blob):
        raise ProtocolError(f"{where}: {len(blob) - pos} bytes of binary data beyond the shape's {count} elements.")
    return texts


def _json_texts(data: Any, count: int, where: str) -> list[str]:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}.data: expected a list of strings.")
    flat = [x for item in data for x in (item if isinstance(item, list) else [item])]
    if len(flat) != count:
        raise ProtocolError(f"{where}.data: {len(flat)} elements but the shape says {count}.")
    for i, text in enumerate(flat):
        if not isinstance(text, str):
            raise ProtocolError(f"{where}.data[{i}]: expected a string (got {type(text).__name__}).")
    return flat


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start}).") from None


def _requested_outputs(value: Any, default_binary: bool) -> dict[str, bool]:
    if value is None:
        return dict.fromkeys(OUTPUTS, default_binary)
    if not isinstance(value, list):
        raise ProtocolError("outputs: expected a list of objects with a name.")
    out: dict[str, bool] = {}
    for i, entry in enumerate(value):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in OUTPUTS:
            raise ProtocolError(f"outputs[{i}].name: expected one of {sorted(OUTPUTS)} (got {name!r}).")
        binary = _parameters(entry.get("parameters"), f"outputs[{i}].parameters").get("binary_data", default_binary)
        out[name] = bool(binary)
    return out


def _binary(name: str, value: Any) -> bytes:
    if name == "label":
        return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in value))
    if name == "degraded":
        return bytes(1 if v else 0 for v in value)
    return np.ascontiguousarray(value, dtype="<f4").tobytes()


__all__ = ["InferRequest", "PayloadTooLargeError", "ProtocolError", "decompress", "encode_infer",
           "model_metadata", "parse_infer", "parse_plain", "plain_response"]
