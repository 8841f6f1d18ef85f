"""JSON Schemas of a run's ``model.json`` and ``config.json``, checked (jsonschema) whenever they are read.

A planted or damaged file ends in one :class:`~transferlab.errors.BadFileError` line naming the file
and the first violation, never in a traceback or a petabyte allocation (``num_classes: 1e12``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jsonschema

from transferlab.errors import BadFileError

__all__ = ["CONFIG_SCHEMA", "MODEL_SCHEMA", "read_config_json", "read_model_json", "validate_json"]

MODEL_FORMAT = 1
_MAX_CLASSES = 100_000
_num = {"type": "number"}
_triple = {"type": "array", "items": _num, "minItems": 3, "maxItems": 3}
_pos_int = {"type": "integer", "minimum": 1}

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "backbone", "num_classes", "classes", "preprocessing", "normalization"],
    # A single network (cut + head), or an ensemble / multi-backbone model (strategies.ensemble: kind "multi").
    "if": {"properties": {"kind": {"const": "multi"}}, "required": ["kind"]},
    "then": {"required": ["members", "groups"], "properties": {
        "members": {"type": "array", "minItems": 1, "maxItems": 64, "items": {
            "type": "object", "required": ["backbone", "cut", "pool"], "properties": {
                "backbone": {"type": "string", "minLength": 1},
                "cut": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1, "maximum": 64}]},
                "pool": {"type": "string"}}}},
        "groups": {"type": "array", "minItems": 1, "maxItems": 64,
                   "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}}}},
    "else": {"required": ["cut", "head"]},
    "properties": {
        "format": {"const": MODEL_FORMAT},
        "task": {"type": "string", "minLength": 1},
        "backbone": {"type": "string", "minLength": 1},
        "cut": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1, "maximum": 64}]},
        "head": {"type": "object", "required": ["kind", "dropout", "pool"], "properties": {
            "kind": {"type": "string"},
            "hidden": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 1 << 16}, "maxItems": 16},
            "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "pool": {"type": "string"}}},
        "num_classes": {"type": "integer", "minimum": 1, "maximum": _MAX_CLASSES},
        "classes": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": _MAX_CLASSES},
        "preprocessing": {"type": "object", "required": ["input_size", "resize_size", "mean", "std"], "properties": {
            "input_size": {"type": "integer", "minimum": 8, "maximum": 4096},
            "resize_size": {"type": "integer", "minimum": 8, "maximum": 4096},
            "mean": _triple, "std": _triple, "interpolation": {"type": "string"}}},
        "normalization": {"type": "object", "required": ["kind", "mean", "std"], "properties": {
            "kind": {"type": "string"}, "mean": _triple, "std": _triple}},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data", "data_options", "train_options"],
    "properties": {
        "data": {"type": "string", "minLength": 1},
        "data_path": {"type": "string", "minLength": 1},
        "data_options": {"type": "object"},
        "train_options": {"type": "object"},
        "plan": {"type": "object"},
    },
}


def validate_json(obj: Any, schema: dict[str, Any], *, path: str | os.PathLike[str], hint: str) -> None:
    """Raise :class:`BadFileError` naming ``path`` and the first schema violation of ``obj``.

    Example:
        >>> validate_json({"format": 999}, MODEL_SCHEMA, path="m.json", hint="retrain")
        Traceback (most recent call last):
        ...
        transferlab.errors.BadFileError: m.json: does not match the model.json schema: 'cut' is a required property; retrain
    """
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(obj))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        what = "model.json" if schema is MODEL_SCHEMA else "config.json" if schema is CONFIG_SCHEMA else "expected"
        raise BadFileError(path, f"does not match the {what} schema: " + (f"at {where}: " if where else "")
                           + _short(error.message), hint)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: Path, hint: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadFileError(path, "not UTF-8 text", hint) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadFileError(path, f"not valid JSON ({_short(str(exc), 80)})", hint) from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def read_model_json(run_dir: str | os.PathLike[str], *, check: Any = None) -> dict[str, Any]:
    """``RUN_DIR/model.json``, schema-checked, with ``len(classes) == num_classes``.

    ``check(meta)`` runs on the parsed JSON before the schema (e.g. a caller's expected task).

    Example:
        >>> meta = read_model_json("runs/flowers")  # doctest: +SKIP
    """
    path = Path(run_dir) / "model.json"
    hint = f"train the run again (transferlab train ... --out {run_dir} --overwrite)"
    meta = _read(path, hint)
    if check is not None and isinstance(meta, dict):
        check(meta)
    validate_json(meta, MODEL_SCHEMA, path=path, hint=hint)
    # one output per class for classification and multi-label heads (a box head's outputs are coordinates)
    if meta.get("task", "classification") in ("classification", "multilabel") and \
            len(meta["classes"]) != meta["num_classes"]:
        raise BadFileError(path, f"lists {len(meta['classes'])} classes but the head has num_classes "
                                 f"{meta['num_classes']} outputs", hint)
    if not all(math.isfinite(v) for key in ("preprocessing", "normalization") for part in ("mean", "std")
               for v in meta[key][part]) or min(meta["normalization"]["std"]) <= 0:
        raise BadFileError(path, "normalization/preprocessing mean and std must be finite, std > 0", hint)
    return meta


def read_config_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN_DIR/config.json``, schema-checked (the options themselves are checked when rebuilt).

    Example:
        >>> cfg = read_config_json("runs/flowers")  # doctest: +SKIP
    """
    path = Path(run_dir) / "config.json"
    hint = f"start the run again with transferlab train ... --out {run_dir} --overwrite"
    cfg = _read(path, hint)
    validate_json(cfg, CONFIG_SCHEMA, path=path, hint=hint)
    return cfg
