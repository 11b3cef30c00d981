"""Read and verify a bundle directory (format, version, file names, sizes, sha256) before anything opens it.

A bundle may come from an untrusted source. Nothing here executes or unpickles anything: the manifest
is JSON, and every file it lists is checked for a safe name, its size and its sha256 before the
runtime hands it to tokenizers or ONNX Runtime. Each verified file's identity (device, inode, size,
mtime, ctime) is kept: `read_verified` re-hashes the bytes it returns, and `opened_verified` hands ONNX
Runtime the path and then checks the file is still the one verified, so a file replaced or rewritten
between check and use is an error, never served.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import BundleError
from textclassify.runtime.graph_io import GraphIOError, graph_io
from textclassify.runtime.validation import is_int

BUNDLE_FORMAT = "textclassify-bundle"
TASKS = ("multi_class", "multi_label")
VARIANTS = ("fp32", "int8", "fp16")
PADDING_MODES = ("longest",)
ROLES = ("component", "calibrator", "fusion")
# Where a pipeline input comes from when no earlier graph makes it: the runtime provides these.
RUNTIME_SOURCES = {"tokenizer.input_ids": "int64", "tokenizer.attention_mask": "int64", "texts": "string",
                   "llm.scores": "float32", "llm.present": "float32"}
DTYPES = ("float32", "int64", "string")
GATE_RULES = {"multi_class": "top_probability", "multi_label": "label_distance"}
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is a few KiB; refuse to parse anything absurd
_HASH_CHUNK = 1024 * 1024
_VERIFY_THREADS = 2


# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): any rewrite or replacement of a file changes one.
FileStamp = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class BundleManifest:
    """The verified manifest: parsed fields plus the raw JSON object (`raw`)."""

    directory: Path
    raw: dict[str, Any]
    format_version: int
    multi_label: bool
    labels: list[str]
    thresholds: list[float] | None
    max_length: int
    tokenizer: dict[str, Any]
    calibrator: dict[str, Any]
    variants: dict[str, str]
    llm: dict[str, Any]
    files: dict[str, dict[str, Any]]
    # The graphs in run order (format 2): each {"name", "role", "file", "inputs", "outputs"}, inputs with "from".
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    # Per-row gate: rows whose no-LLM confidence reaches it skip the LLM; None: every row asks the LLM.
    gate_threshold: float | None = None
    # parity.int8.recheck_margin(_ml): int8 rows closer to a flip than this are rerun in fp32 (runtime.recheck);
    # the _ml one is for rows decided by ml_logits (no LLM score), and defaults to the other.
    int8_recheck_margin: float | None = None
    int8_recheck_margin_ml: float | None = None
    # Identity of each file as load_manifest hashed it (FileStamp): what later use checks the file against.
    stamps: dict[str, FileStamp] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def step(self, role: str) -> dict[str, Any]:
        """The first pipeline step with this role."""
        return next(s for s in self.pipeline if s["role"] == role)

    @property
    def components(self) -> list[dict[str, Any]]:
        return [s for s in self.pipeline if s["role"] == "component"]


def standard_pipeline(n_labels: int, *, lexical: bool = False,
                      encoder_file: str = K.ENCODER_FILE) -> list[dict[str, Any]]:
    """The manifest's 'pipeline' for encoder [+ lexical] -> calibrator -> fusion, as export writes it."""
    logits = {"dtype": "float32", "shape": ["batch", n_labels]}
    steps: list[dict[str, Any]] = [{
        "name": "encoder", "role": "component", "file": encoder_file,
        "inputs": {name: {"dtype": "int64", "shape": ["batch", "sequence"], "from": f"tokenizer.{name}"}
                   for name in K.ENCODER_INPUTS},
        "outputs": {K.ENCODER_OUTPUT: dict(logits)},
    }]
    fusion_inputs: dict[str, Any] = {K.ENCODER_OUTPUT: {**logits, "from": f"encoder.{K.ENCODER_OUTPUT}"}}
    if lexical:
        steps.append({"name": "lexical", "role": "component", "file": K.LEXICAL_FILE,
                      "inputs": {K.LEXICAL_INPUT: {"dtype": "string", "shape": ["batch"], "from": "texts"}},
                      "outputs": {K.LEXICAL_OUTPUT: dict(logits)}})
        fusion_inputs[K.LEXICAL_OUTPUT] = {**logits, "from": f"lexical.{K.LEXICAL_OUTPUT}"}
    steps.append({"name": "calibrator", "role": "calibrator", "file": K.CALIBRATOR_FILE,
                  "inputs": {K.CALIBRATOR_INPUT: {**logits, "from": "llm.scores"}},
                  "outputs": {K.CALIBRATOR_OUTPUT: dict(logits)}})
    fusion_inputs[K.CALIBRATOR_OUTPUT] = {**logits, "from": f"calibrator.{K.CALIBRATOR_OUTPUT}"}
    fusion_inputs[K.LLM_PRESENT] = {"dtype": "float32", "shape": ["batch", 1], "from": "llm.present"}
    steps.append({"name": "fusion", "role": "fusion", "file": K.FUSION_FILE, "inputs": fusion_inputs,
                  "outputs": {K.FUSED_OUTPUT: dict(logits)}})
    return steps


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return _sha256_stream(fh)


def load_manifest(bundle_dir: str | os.PathLike[str]) -> BundleManifest:
    """Parse manifest.json, check its schema, and verify every listed file; raise BundleError naming the file."""
    directory = Path(bundle_dir)
    if not directory.is_dir():
        raise BundleError(f"Bundle directory {str(directory)!r} does not exist or is not a directory.")
    raw = _read_manifest_json(directory)
    manifest = _parse(directory, raw)
    # Two threads: reading and sha256 release the GIL, so the small files are verified while the large graph
    # is. Errors are raised in the manifest's file order, whichever thread finished first.
    with ThreadPoolExecutor(max_workers=_VERIFY_THREADS) as pool:
        largest_first = sorted(manifest.files.items(), key=lambda item: -item[1]["bytes"])
        pending = {name: pool.submit(_verify_file, directory, name, entry) for name, entry in largest_first}
        for name in manifest.files:
            manifest.stamps[name] = pending[name].result()
    _check_graph_io(manifest)
    return manifest


def _check_graph_io(manifest: BundleManifest) -> None:
    """Each pipeline graph (and each encoder variant) declares exactly the inputs and outputs the manifest says."""
    checks = [(i, step, step["file"], f"pipeline[{i}]") for i, step in enumerate(manifest.pipeline)]
    encoder = next((i for i, s in enumerate(manifest.pipeline) if s["name"] == "encoder"), None)
    if encoder is not None:
        for key, name in manifest.variants.items():
            if name != manifest.pipeline[encoder]["file"]:
                checks.append((encoder, manifest.pipeline[encoder], name, f"variants.{key}"))
    for _, step, name, where in checks:
        try:
            have_in, have_out = graph_io(_safe_path(manifest.directory, name))
        except (GraphIOError, OSError) as e:
            raise BundleError(f"{name} ({where}): not a readable ONNX graph ({e}).") from None
        for kind, have in (("inputs", have_in), ("outputs", have_out)):
            want = {key: spec["dtype"] for key, spec in step[kind].items()}
            if sorted(have) != sorted(want):
                raise BundleError(f"{name}: the graph's {kind} {sorted(have)} differ from {K.MANIFEST_FILE} "
                                  f"'{where}.{kind}' {sorted(want)}.")
            for key, dtype in want.items():
                if have[key] != dtype:
                    raise BundleError(f"{name}: the graph's {kind[:-1]} {key!r} is {have[key]}, but {K.MANIFEST_FILE} "
                                      f"'{where}.{kind}.{key}.dtype' says {dtype}.")


def read_verified(manifest: BundleManifest, name: str) -> bytes:
    """The bytes of a listed file, re-checked against the manifest's size and sha256 as they are read."""
    entry = _listed(manifest, name)
    path = _safe_path(manifest.directory, name)
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise BundleError(f"{name}: size {len(data)} bytes differs from the manifest's {entry['bytes']} "
                          "(truncated or replaced file).")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BundleError(f"{name}: sha256 differs from the manifest (tampered or corrupted file).")
    return data


@contextmanager
def opened_verified(manifest: BundleManifest, name: str) -> Iterator[bytes | str]:
    """A file load_manifest verified, for ONNX Runtime to open itself: a path, or its verified bytes.

    The path is a symlink alone in a fresh private directory, so a graph that names external data can
    reach no file beside it (ORT resolves external data next to the graph and refuses paths that leave
    that directory); where no symlink can be made (Windows without the privilege) the bytes are read and
    re-hashed instead. On leaving the block the file must still be the one hashed (same device, inode,
    size, mtime and ctime), else BundleError. A path instead of bytes saves two copies of the graph:
    load_bundle on an 86 MB MiniLM graph went from 0.25 s to 0.16 s.
    """
    _listed(manifest, name)
    stamp = manifest.stamps.get(name)
    if stamp is None:
        raise BundleError(f"{name}: not verified by load_manifest; refusing to open it.")
    path = _safe_path(manifest.directory, name)
    private = tempfile.mkdtemp(prefix="textclassify-bundle-")
    link = os.path.join(private, name)
    try:
        try:
            os.symlink(os.path.realpath(path), link)
        except OSError:
            yield read_verified(manifest, name)
        else:
            yield link
    finally:
        if os.path.lexists(link):
            os.unlink(link)
        os.rmdir(private)
    if _stamp(os.stat(path)) != stamp:
        raise BundleError(f"{name}: changed on disk after it was verified (rewritten or replaced while "
                          "loading); load the bundle again.")


def _listed(manifest: BundleManifest, name: str) -> dict[str, Any]:
    entry = manifest.files.get(name)
    if entry is None:
        raise BundleError(f"{name}: not listed in manifest.json 'files'; refusing an unverified file.")
    return entry


def _verify_file(directory: Path, name: str, entry: dict[str, Any]) -> FileStamp:
    """Check a listed file's size (cheap) and then its sha256; return its identity as hashed."""
    path = _safe_path(directory, name)
    with open(path, "rb") as fh:
        before = _stamp(os.fstat(fh.fileno()))
        if before[2] != entry["bytes"]:
            raise BundleError(f"{name}: size {before[2]} bytes differs from the manifest's {entry['bytes']} "
                              "(truncated or replaced file).")
        digest = _sha256_stream(fh)
        if _stamp(os.fstat(fh.fileno())) != before:
            raise BundleError(f"{name}: changed on disk while it was being verified; load the bundle again.")
    if digest != entry["sha256"]:
        raise BundleError(f"{name}: sha256 differs from the manifest (tampered or corrupted file).")
    return before


def _sha256_stream(fh: Any) -> str:
    """Hex sha256 of an open binary file from its current position, through one reused 1 MiB buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    while n := fh.readinto(buffer):
        digest.update(view[:n])
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> FileStamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_manifest_json(directory: Path) -> dict[str, Any]:
    path = directory / K.MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"{K.MANIFEST_FILE} is missing from {str(directory)!r}; not a textclassify bundle.")
    path = _safe_path(directory, K.MANIFEST_FILE)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{K.MANIFEST_FILE}: {size} bytes is larger than the {MAX_MANIFEST_BYTES} allowed.")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise BundleError(f"{K.MANIFEST_FILE} is not valid UTF-8 ({e.reason} at byte {e.start}).") from None
    except RecursionError:  # json's decoder recurses per level: 200,000 nested arrays exhaust the stack
        raise BundleError(f"{K.MANIFEST_FILE}: nested too deeply.") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{K.MANIFEST_FILE} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}).") \
            from None
    except ValueError as e:
        raise BundleError(f"{K.MANIFEST_FILE} is not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{K.MANIFEST_FILE} must hold a JSON object (got {type(raw).__name__}).")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse(directory: Path, raw: dict[str, Any]) -> BundleManifest:
    fmt = raw.get("format")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(f"{K.MANIFEST_FILE}: 'format' must be {BUNDLE_FORMAT!r} (got {fmt!r}).")
    version = raw.get("format_version")
    if not is_int(version) or version < 1:
        raise BundleError(f"{K.MANIFEST_FILE}: 'format_version' must be a positive int (got {version!r}).")
    if version < K.BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{K.MANIFEST_FILE}: format_version {version} is an older bundle format (one model.onnx graph) that "
            f"this textclassify no longer serves; re-export it from its saved model with "
            f"`{K.REEXPORT_COMMAND}`."
        )
    if version > K.BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{K.MANIFEST_FILE}: format_version {version} is newer than this textclassify supports "
            f"({K.BUNDLE_FORMAT_VERSION}); upgrade textclassify to load this bundle."
        )
    task = _field(raw, "task", str)
    if task not in TASKS:
        raise BundleError(f"{K.MANIFEST_FILE}: 'task' must be one of {list(TASKS)} (got {task!r}).")
    labels = _labels(raw)
    files = _files(raw)
    tokenizer = _block(raw, "tokenizer", {"file": str})
    variants = _variants(raw)
    pipeline = _pipeline(raw, len(labels))
    required = {"tokenizer.file": tokenizer["file"], **{f"variants.{k}": v for k, v in variants.items()},
                **{f"pipeline[{i}].file": step["file"] for i, step in enumerate(pipeline)}}
    for where, name in required.items():
        if name not in files:
            raise BundleError(f"{name} ({where}) is not listed in {K.MANIFEST_FILE} 'files'; "
                              "refusing an unverified file.")
    encoder = next((s for s in pipeline if s["name"] == "encoder"), None)
    if encoder is None or encoder["file"] != variants["fp32"]:
        raise BundleError(f"{K.MANIFEST_FILE}: 'variants.fp32' ({variants['fp32']!r}) must be the file of the "
                          f"pipeline's 'encoder' graph (got {None if encoder is None else encoder['file']!r}).")
    cal = next(s for s in pipeline if s["role"] == "calibrator")
    calibrator = {"file": cal["file"], "input": next(iter(cal["inputs"])), "output": next(iter(cal["outputs"])),
                  **({"kind": raw["calibrator"].get("kind")} if isinstance(raw.get("calibrator"), dict) else {})}
    max_length = raw.get("max_length")
    if not is_int(max_length) or max_length < 2:
        raise BundleError(f"{K.MANIFEST_FILE}: 'max_length' must be an int >= 2 (got {max_length!r}).")
    _tokenizer_settings(tokenizer)
    if tokenizer.get("max_length", max_length) != max_length:
        raise BundleError(f"{K.MANIFEST_FILE}: 'tokenizer.max_length' ({tokenizer['max_length']!r}) differs from "
                          f"'max_length' ({max_length}).")
    return BundleManifest(
        directory=directory, raw=raw, format_version=version, multi_label=task == "multi_label",
        labels=labels, thresholds=_thresholds(raw, len(labels)), max_length=max_length, tokenizer=tokenizer,
        calibrator=calibrator, variants=variants, llm=_block(raw, "llm", {"provider": str}), files=files,
        pipeline=pipeline, gate_threshold=_gate(raw, task),
        int8_recheck_margin=_recheck_margin(raw, "recheck_margin") if "int8" in variants else None,
        int8_recheck_margin_ml=_recheck_margin(raw, "recheck_margin_ml") if "int8" in variants else None,
    )


def _gate(raw: dict[str, Any], task: str) -> float | None:
    """gate.threshold: a number in [0, 1], or null (or no gate block): every row asks the LLM."""
    gate = raw.get("gate")
    if gate is None:
        return None
    if not isinstance(gate, dict):
        raise BundleError(f"{K.MANIFEST_FILE}: 'gate' must be an object or null (got {gate!r}).")
    rule = gate.get("rule", GATE_RULES[task])
    if rule != GATE_RULES[task]:
        raise BundleError(f"{K.MANIFEST_FILE}: 'gate.rule' must be {GATE_RULES[task]!r} for a {task} bundle "
                          f"(got {rule!r}).")
    value = gate.get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise BundleError(f"{K.MANIFEST_FILE}: 'gate.threshold' must be a number in [0, 1] or null (got {value!r}).")
    return float(value)


def _pipeline(raw: dict[str, Any], n_labels: int) -> list[dict[str, Any]]:
    """The pipeline's graphs in run order: components, then the calibrator, then the fusion graph last."""
    steps = _field(raw, "pipeline", list)
    where = f"{K.MANIFEST_FILE}: 'pipeline"
    if not steps:
        raise BundleError(f"{where}' must list the bundle's graphs (got an empty list).")
    made: dict[str, str] = dict(RUNTIME_SOURCES)  # source -> dtype, growing with each step's outputs
    roles: list[str] = []
    names: set[str] = set()
    out: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        at = f"{where}[{i}]"
        if not isinstance(step, dict):
            raise BundleError(f"{at}' must be an object (got {step!r}).")
        for key in ("name", "role", "file"):
            if not isinstance(step.get(key), str) or not step[key]:
                raise BundleError(f"{at}.{key}' must be a non-empty string (got {step.get(key)!r}).")
        name, role = step["name"], step["role"]
        if role not in ROLES:
            raise BundleError(f"{at}.role' must be one of {list(ROLES)} (got {role!r}).")
        if name in names or name in ("tokenizer", "llm", "texts"):
            raise BundleError(f"{at}.name' {name!r} is used twice or is reserved.")
        names.add(name)
        _check_name(step["file"])
        inputs = _io(step, "inputs", at, n_labels, needs_source=True)
        outputs = _io(step, "outputs", at, n_labels, needs_source=False)
        allowed = {"component": ("tokenizer.input_ids", "tokenizer.attention_mask", "texts"),
                   "calibrator": ("llm.scores",), "fusion": None}[role]
        reads = list(allowed) if allowed else "earlier graphs outputs and llm.present"
        for key, spec in inputs.items():
            source = spec["from"]
            raw_source = source in RUNTIME_SOURCES and source != "llm.present"
            if source not in made or (allowed is not None and source not in allowed) \
                    or (role == "fusion" and raw_source):
                raise BundleError(f"{at}.inputs.{key}.from' {source!r} is not something this step can read "
                                  f"(a {role} reads {reads}).")
            if made[source] != spec["dtype"]:
                raise BundleError(f"{at}.inputs.{key}.dtype' is {spec['dtype']!r} but {source!r} is {made[source]!r}.")
        if len(outputs) != 1 or next(iter(outputs.values()))["dtype"] != "float32":
            raise BundleError(f"{at}.outputs' must name exactly one float32 output (got {list(outputs)}).")
        if role == "calibrator" and len(inputs) != 1:
            raise BundleError(f"{at}.inputs' of the calibrator must be its one input from 'llm.scores'.")
        if role == "fusion":
            sources = {spec["from"] for spec in inputs.values()}
            if "llm.present" not in sources or not any(s.split(".")[0] in
                                                       [o["name"] for o in out if o["role"] == "calibrator"]
                                                       for s in sources):
                raise BundleError(f"{at}.inputs' of the fusion graph must read 'llm.present' and the calibrator's "
                                  "output.")
        made.update({f"{name}.{key}": spec["dtype"] for key, spec in outputs.items()})
        roles.append(role)
        out.append({"name": name, "role": role, "file": step["file"], "inputs": inputs, "outputs": outputs})
    n_comp = roles.count("component")
    if n_comp < 1 or roles != ["component"] * n_comp + ["calibrator", "fusion"]:
        raise BundleError(f"{where}' must run its component graphs, then one calibrator, then one fusion graph "
                          f"(got roles {roles}).")
    return out


def _io(step: dict[str, Any], kind: str, at: str, n_labels: int, *, needs_source: bool) -> dict[str, dict[str, Any]]:
    block = step.get(kind)
    if not isinstance(block, dict) or not block:
        raise BundleError(f"{at}.{kind}' must be a non-empty object of tensor names (got {block!r}).")
    out: dict[str, dict[str, Any]] = {}
    for key, spec in block.items():
        if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES or not isinstance(spec.get("shape"), list):
            raise BundleError(f"{at}.{kind}.{key}' must be an object with a 'dtype' in {list(DTYPES)} and a "
                              f"'shape' list (got {spec!r}).")
        if needs_source and not isinstance(spec.get("from"), str):
            raise BundleError(f"{at}.{kind}.{key}.from' must name where the input comes from (got "
                              f"{spec.get('from')!r}).")
        shape = spec["shape"]
        if kind == "outputs" and shape != ["batch", n_labels]:
            raise BundleError(f"{at}.{kind}.{key}.shape' must be ['batch', {n_labels}] (got {shape!r}).")
        out[key] = dict(spec)
    return out


def _recheck_margin(raw: dict[str, Any], key: str) -> float | None:
    """parity.int8.<key> when the export recorded it (a finite number >= 0), else None."""
    parity = raw.get("parity")
    int8 = parity.get("int8") if isinstance(parity, dict) else None
    if not isinstance(int8, dict) or key not in int8:
        return None
    value = int8[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BundleError(f"{K.MANIFEST_FILE}: 'parity.int8.{key}' must be a finite number >= 0 (got {value!r}).")
    return float(value)


def _field(raw: dict[str, Any], key: str, kind: type) -> Any:
    if key not in raw:
        raise BundleError(f"{K.MANIFEST_FILE}: required key {key!r} is missing.")
    value = raw[key]
    if not isinstance(value, kind):
        raise BundleError(f"{K.MANIFEST_FILE}: {key!r} must be a {kind.__name__} (got {type(value).__name__}).")
    return value


def _block(raw: dict[str, Any], key: str, required: dict[str, type]) -> dict[str, Any]:
    block = _field(raw, key, dict)
    for sub, kind in required.items():
        if not isinstance(block.get(sub), kind):
            raise BundleError(f"{K.MANIFEST_FILE}: '{key}.{sub}' must be a {kind.__name__} "
                              f"(got {block.get(sub)!r}).")
    return block


def _labels(raw: dict[str, Any]) -> list[str]:
    labels = _field(raw, "labels", list)
    least = 2 if raw.get("task") == "multi_class" else 1
    if len(labels) < least:
        raise BundleError(f"{K.MANIFEST_FILE}: 'labels' must list at least {least} label(s) (got {labels!r}).")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab:
            raise BundleError(f"{K.MANIFEST_FILE}: labels[{i}] must be a non-empty string (got {lab!r}).")
    if len(set(labels)) != len(labels):
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        raise BundleError(f"{K.MANIFEST_FILE}: 'labels' has duplicates: {dup}.")
    return list(labels)


def _thresholds(raw: dict[str, Any], n_labels: int) -> list[float] | None:
    value = raw.get("thresholds")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n_labels:
        raise BundleError(f"{K.MANIFEST_FILE}: 'thresholds' must be null or a list of {n_labels} floats "
                          f"(got {value!r}).")
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.0 <= t <= 1.0) or math.isnan(t):
            raise BundleError(f"{K.MANIFEST_FILE}: thresholds[{i}] must be a float in [0, 1] (got {t!r}).")
    return [float(t) for t in value]


def _variants(raw: dict[str, Any]) -> dict[str, str]:
    variants = _field(raw, "variants", dict)
    for key, name in variants.items():
        if key not in VARIANTS:
            raise BundleError(f"{K.MANIFEST_FILE}: unknown variant {key!r} in 'variants'; "
                              f"expected some of {list(VARIANTS)}.")
        if not isinstance(name, str):
            raise BundleError(f"{K.MANIFEST_FILE}: 'variants.{key}' must be a file name (got {name!r}).")
    if "fp32" not in variants:
        raise BundleError(f"{K.MANIFEST_FILE}: 'variants' must include 'fp32' (got {sorted(variants)}).")
    return dict(variants)


def _tokenizer_settings(tokenizer: dict[str, Any]) -> None:
    padding = tokenizer.get("padding", "longest")
    if padding not in PADDING_MODES:
        raise BundleError(f"{K.MANIFEST_FILE}: 'tokenizer.padding' must be one of {list(PADDING_MODES)} "
                          f"(got {padding!r}).")
    pad_id = tokenizer.get("pad_token_id")
    if pad_id is not None and (not is_int(pad_id) or pad_id < 0):
        raise BundleError(f"{K.MANIFEST_FILE}: 'tokenizer.pad_token_id' must be an int >= 0 (got {pad_id!r}).")
    for side in ("padding_side", "truncation_side"):
        if tokenizer.get(side, "right") != "right":
            raise BundleError(f"{K.MANIFEST_FILE}: 'tokenizer.{side}' must be 'right', the only side the runtime "
                              f"supports (got {tokenizer.get(side)!r}).")
    if not isinstance(tokenizer.get("truncation", True), bool):
        raise BundleError(f"{K.MANIFEST_FILE}: 'tokenizer.truncation' must be true or false "
                          f"(got {tokenizer.get('truncation')!r}).")


def _files(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = _field(raw, "files", dict)
    for name, entry in files.items():
        _check_name(name)
        if not isinstance(entry, dict):
            raise BundleError(f"{name}: its entry in {K.MANIFEST_FILE} 'files' must be an object (got {entry!r}).")
        digest, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{name}: 'sha256' in {K.MANIFEST_FILE} must be 64 lowercase hex digits "
                              f"(got {digest!r}).")
        if not is_int(size) or size < 0:
            raise BundleError(f"{name}: 'bytes' in {K.MANIFEST_FILE} must be an int >= 0 (got {size!r}).")
    return files


def _check_name(name: str) -> None:
    """A listed file must be a plain name inside the bundle: no path, no parent, not absolute."""
    if not name or "\x00" in name:
        raise BundleError(f"{name!r}: listed in {K.MANIFEST_FILE} with an empty or invalid name.")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{name}: listed in {K.MANIFEST_FILE} with an absolute path; "
                          "bundle files must be plain names inside the bundle.")
    if ".." in name:
        raise BundleError(f"{name}: listed in {K.MANIFEST_FILE} with '..'; "
                          "bundle files must be plain names inside the bundle.")
    if "/" in name or "\\" in name:
        raise BundleError(f"{name}: listed in {K.MANIFEST_FILE} with a path separator; "
                          "bundle files must be plain names inside the bundle.")
    if name == K.MANIFEST_FILE:
        raise BundleError(f"{name}: the manifest cannot list itself in 'files'.")


def _safe_path(directory: Path, name: str) -> Path:
    """The file's path, refusing symlinks that resolve outside the bundle and anything not a regular file."""
    path = directory / name
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        root = Path(os.path.realpath(directory))
        if root not in target.parents:
            raise BundleError(f"{name}: is a symlink that leaves the bundle (-> {target}); refusing it.")
    if not path.exists():
        raise BundleError(f"{name}: listed in {K.MANIFEST_FILE} but missing from the bundle.")
    if not path.is_file():
        raise BundleError(f"{name}: is not a regular file.")
    return path
