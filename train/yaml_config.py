"""The YAML file of `fusion-train --config`: the original layout (data, models.ml, models.llm, fusion, output_dir).

Each YAML key maps onto one key of the flat AutoFusionClassifier config (train/config.py), whose
rules check it; every error names the key's path in the YAML's own terms
(`fusion.hidden_dims[1]: expected a positive integer, got -3`) before anything is trained.
Relative paths are relative to the folder fusion-train runs in, like the command-line flags.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from textclassify.runtime.atomic import write_atomic
from textclassify.runtime.errors import ConfigError
from textclassify.runtime.validation import check_base_url, short_repr, url_has_credentials
from textclassify.train.config import DEFAULT_CONFIG, RULES, validate_config

log = logging.getLogger("textclassify.config")


class Field(NamedTuple):
    """One YAML key: its path in the file, the flat config key it sets (None: CLI-only) and what it does."""

    path: str
    flat: str | None
    comment: str


def _read_fields() -> tuple[dict[str, str], tuple[Field, ...]]:
    """The sections and keys of the file, from config_fields.yaml beside this module (also docs/config.md's source)."""
    table = yaml.safe_load(files("textclassify.train").joinpath("config_fields.yaml").read_text(encoding="utf-8"))
    return dict(table["sections"]), tuple(Field(f["path"], f["flat"], f["comment"]) for f in table["fields"])


SECTIONS, FIELDS = _read_fields()

# Older spellings accepted for the original API's files; giving both an alias and its key is an error.
ALIASES: dict[str, str] = {
    "models.ml.ml_model": "models.ml.model_name",
    "data.file_path": "data.train_path",
    "fusion.ml_learning_rate": "fusion.ml_lr",
    "fusion.fusion_learning_rate": "fusion.fusion_lr",
}

# Seed keys with no counterpart here: checked, then ignored with a warning that says why.
IGNORED: dict[str, tuple[Any, str, str]] = {
    "models.llm.max_completion_tokens": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer",
        "the answer's length follows the score method (one label token for logprobs, a budget per label "
        "for json)"),
}

_BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}
_CLI_ONLY_DEFAULTS: dict[str, Any] = {"data.train_path": None, "data.test_path": None}
_PATH_RULE = (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a CSV file path or null")


def _schema_tree() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for f in FIELDS:
        node = tree
        *parents, leaf = f.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = f
    return tree


_TREE = _schema_tree()


@dataclass(frozen=True)
class TrainConfig:
    """A validated `fusion-train` config: the classifier's flat config and the data files."""

    classifier: dict[str, Any]
    train_path: str | None
    test_path: str | None


# ------------------------------------------------------------------------------------------ loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `2e-5` as a float (YAML 1.2) and rejects duplicate keys, anchors and aliases.

    A config has no use for anchors (&a) and aliases (*a), and they are how a 514-byte file expands into
    gigabytes (the "billion laughs"): they are refused before anything is expanded.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "aliases (*name)" if isinstance(event, yaml.AliasEvent) else "anchors (&name)"
            raise yaml.composer.ComposerError(None, None, f"YAML {kind} are not allowed in a config file",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error says so
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_config_document(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML file as a dict (not validated yet); unreadable or malformed YAML is a ConfigError naming the file."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror}).") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the config file is not valid UTF-8 (byte {e.start}).") from None
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}.") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(document).__name__}.")
    return document


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read (no file: defaults only), override (YAML paths such as 'models.llm.model') and validate a
    fusion-train YAML file."""
    document = read_config_document(path) if path else {}
    return parse_config(apply_overrides(document, overrides or {}))


def apply_overrides(document: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `document` with each YAML path in `overrides` set (command-line flags win over the file)."""
    out = copy.deepcopy(dict(document))
    for path, value in overrides.items():
        if path not in _BY_PATH:
            raise ConfigError(f"{path}: unknown key; cannot override it.")
        for alias, target in ALIASES.items():
            if target == path:
                _delete(out, alias)
        *parents, leaf = path.split(".")
        node: Any = out
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                break  # a malformed section: parse_config names it
        else:
            node[leaf] = value
    return out


def _delete(document: dict[str, Any], path: str) -> None:
    *parents, leaf = path.split(".")
    node: Any = document
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


# --------------------------------------------------------------------------------------- validation
def _fail(path: str, expected: str, value: Any) -> ConfigError:
    if path == "models.llm.base_url" and url_has_credentials(value):
        check_base_url(value, path)  # raises without echoing the credentials
    return ConfigError(f"{path}: expected {expected}, got {short_repr(value)}")


def _check_leaf(path: str, field: Field, value: Any) -> None:
    check, expected = RULES[field.flat] if field.flat else _PATH_RULE
    if not check(value):
        raise _fail(path, expected, value)
    element = RULES.get(f"{field.flat}[]") if field.flat else None
    if element is not None:
        for i, item in enumerate(value):
            if not element[0](item):
                raise _fail(f"{path}[{i}]", element[1], item)


def _unknown(path: str, key: Any, known: Mapping[str, Any]) -> ConfigError:
    where = f" under {path}" if path else ""
    key = key if isinstance(key, str) and len(key) <= 100 else short_repr(key, 100)
    full = f"{path}.{key}" if path else str(key)
    if isinstance(key, str) and "key" in key.lower():
        return ConfigError(f"{full}: unknown key; API keys are read from the environment only (for example "
                           f"DEEPSEEK_API_KEY), never from a config file.")
    return ConfigError(f"{full}: unknown key (known keys{where}: {', '.join(known)})")


def _walk(node: Mapping[Any, Any], tree: Mapping[str, Any], prefix: str, found: dict[str, Any]) -> None:
    node = dict(node)
    for path, (check, expected, why) in IGNORED.items():
        parent, leaf = path.rsplit(".", 1)
        if parent == prefix and leaf in node:
            value = node.pop(leaf)
            if not check(value):
                raise _fail(path, expected, value)
            log.warning("%s: accepted for compatibility and ignored: %s.", path, why)
    for alias, target in ALIASES.items():
        a_parent, a_leaf = alias.rsplit(".", 1)
        t_leaf = target.rsplit(".", 1)[1]
        if a_parent == prefix and a_leaf in node:
            if t_leaf in node:
                raise ConfigError(f"{alias}: give either {t_leaf} or {a_leaf} under {prefix}, not both.")
            node[t_leaf] = node.pop(a_leaf)
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if not isinstance(key, str) or key not in tree:
            raise _unknown(prefix, key, tree)
        spec = tree[key]
        if isinstance(spec, dict):
            if value is None:  # a section whose keys are all commented out
                continue
            if not isinstance(value, Mapping):
                raise _fail(path, "a mapping of keys", value)
            _walk(value, spec, path, found)
        else:
            _check_leaf(path, spec, value)
            found[path] = value


_FLAT_TO_YAML = {f.flat: f.path for f in FIELDS if f.flat and f.flat != f.path}
_FLAT_NAMES = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(k) for k in sorted(_FLAT_TO_YAML, key=len, reverse=True)) + r")(?![\w])")


def to_yaml_terms(message: str) -> str:
    """Rewrite flat config key names in a validation message as their YAML paths."""
    return _FLAT_NAMES.sub(lambda m: _FLAT_TO_YAML[m.group(1)], message)


def parse_config(document: Mapping[str, Any]) -> TrainConfig:
    """Validate a parsed YAML document (every key, type and value) and map it onto the flat classifier config."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"config: expected a mapping of keys at the top level, got {type(document).__name__}")
    if document.get("gate") in ("off", False):  # `gate: off` (YAML reads a bare off as false): no cascade
        document = {**document, "gate": {"enabled": False}}
    found: dict[str, Any] = {}
    _walk(document, _TREE, "", found)
    flat: dict[str, Any] = {}
    for path, value in found.items():
        field = _BY_PATH[path]
        if field.flat is None:
            continue
        *parents, leaf = field.flat.split(".")
        node = flat
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    try:
        classifier = validate_config(flat)
    except ConfigError as e:
        raise ConfigError(to_yaml_terms(str(e))) from None
    return TrainConfig(classifier=classifier, train_path=found.get("data.train_path"),
                       test_path=found.get("data.test_path"))


# ---------------------------------------------------------------------------------- default file
def _default(field: Field) -> Any:
    if field.flat is None:
        return _CLI_ONLY_DEFAULTS[field.path]
    value: Any = DEFAULT_CONFIG
    for part in field.flat.split("."):
        value = value[part]
    return value


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"  # '1.0e-05': a float to every YAML loader, not only to ours
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w./-]*", text) and yaml.safe_load(text) == text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_config_text() -> str:
    """The commented default YAML: every key with a comment saying what it does."""
    lines = [
        "# fusion-train configuration (textclassify). Train with: fusion-train --config <this file>",
        "# Command-line flags override these values; unknown keys are rejected. Relative paths are",
        "# relative to the folder you run fusion-train in.",
    ]
    opened: set[str] = set()
    for field in FIELDS:
        *parents, leaf = field.path.split(".")
        for depth in range(len(parents)):
            section = ".".join(parents[: depth + 1])
            if section not in opened:
                opened.add(section)
                indent = "  " * depth
                if depth == 0:
                    lines.append("")
                lines += [f"{indent}# {SECTIONS[section]}", f"{indent}{parents[depth]}:"]
        if not parents:
            lines.append("")
        indent = "  " * len(parents)
        lines += [f"{indent}# {field.comment}", f"{indent}{leaf}: {_scalar(_default(field))}"]
    return "\n".join(lines) + "\n"


def write_default_config(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the commented default config to `path` (refuses to replace an existing file unless `overwrite`)."""
    target = Path(path).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; choose another path or overwrite it explicitly.")
    if target.parent and not target.parent.exists():
        raise ConfigError(f"{path}: the folder {str(target.parent)!r} does not exist.")
    return write_atomic(target, default_config_text())
