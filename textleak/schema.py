"""What textleak's JSON documents may hold, checked whole before anything is built from them.

JSON Schemas (checked with `jsonschema`, integers strict: 1.0 and true are not integers) for a
gradient file's metadata, declared knowledge, a reference file and a sweep's result records,
plus the rules a schema cannot state: sizes against each other and against hard limits, so a
small file can never make textleak build something large. Every failure is one line naming the
field, e.g. `metadata.knowledge.seq_lengths[0]: 'abc' is not of type 'integer'`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Mapping

from .errors import InputError

#: hard limits on what metadata may declare (far above any real batch, far below a memory bomb)
LIMITS = {"batch_size": 4096, "tokens": 262_144, "seq_length": 65_536, "channels": 64, "image_side": 4096,
          "pixels": 2**28, "name_chars": 4096, "metadata_chars": 4 * 2**20, "classes": 2**20}

INT = {"type": "integer"}
NAT = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
NULL = {"type": "null"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [NULL, schema]}


TEXT_MODEL = {
    "type": "object", "required": ["name", "task"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": LIMITS["name_chars"]},
        "family": STR, "task": {"enum": ["mlm", "classify"]},
        "num_labels": _nullable({"type": "integer", "minimum": 1, "maximum": LIMITS["classes"]}),
        "head_seed": {"type": "integer", "minimum": -1}, "config_hash": _nullable(STR),
        "weights_hash": _nullable(STR), "initialised": {"type": "array", "items": STR},
    },
}
IMAGE_MODEL = {
    "type": "object", "required": ["name", "num_labels"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": LIMITS["name_chars"]},
        "family": STR, "task": {"const": "classify"},
        "num_labels": {"type": "integer", "minimum": 2, "maximum": LIMITS["classes"]},
        "input_shape": {"type": "array", "prefixItems": [
            {"type": "integer", "minimum": 1, "maximum": LIMITS["channels"]},
            {"type": "integer", "minimum": 4, "maximum": LIMITS["image_side"]},
            {"type": "integer", "minimum": 4, "maximum": LIMITS["image_side"]}], "minItems": 3, "maxItems": 3},
        "mean": {"type": "array", "items": {"type": "number"}, "maxItems": LIMITS["channels"]},
        "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "maxItems": LIMITS["channels"]},
        "init_seed": {"type": "integer", "minimum": -1}, "config_hash": _nullable(STR), "weights_hash": _nullable(STR),
    },
}
_RATE = {"type": "number", "minimum": 0, "maximum": 1}
#: the `capture` section `textleak.capturing.CaptureBuilder` writes (text, images, the transformers
#: callback, Flower); keys a later capture adds are accepted as any JSON value
CAPTURE = {
    "type": "object",
    "properties": {
        "source": STR, "mode": {"enum": ["eval", "train", "unknown"]},
        "dropout": {"type": "object", "additionalProperties": _RATE},
        "clipping": {"type": "object", "properties": {
            "max_norm": _nullable({"type": "number", "exclusiveMinimum": 0}), "clipped": {"type": ["boolean", "null"]},
            "per_layer": _nullable({"type": "number", "exclusiveMinimum": 0})}},
        "precision": {"enum": ["float32", "bfloat16", "float16"]},
        "padding": _nullable({"type": "object", "properties": {
            "side": {"enum": ["left", "right"]}, "length": _nullable({"type": "integer", "minimum": 1,
                                                                      "maximum": LIMITS["seq_length"]})}}),
        "accumulation": {"type": "object", "properties": {"steps": {"type": "integer", "minimum": 1}}},
        "loss": {"type": "object", "properties": {"function": STR, "reduction": STR}},
        "defence": _nullable({"type": "object", "required": ["spec", "name"], "properties": {
            "spec": STR, "name": STR, "stage": STR, "shares": STR, "params": {"type": "object"}}}),
        "victim": {"type": "object"}, "determinism": {"type": "object"},
        # a weight update written by other tools: what it is and how the client made it (#15)
        "shares": {"enum": ["gradient", "update"]},
        "update": {"type": "object", "properties": {
            "local_steps": {"type": "integer", "minimum": 1}, "local_lr": {"type": "number", "exclusiveMinimum": 0},
            "minibatch": _nullable({"type": "integer", "minimum": 0}), "optimizer": STR,
            "weight_decay": {"type": "number", "minimum": 0}, "shuffle": {"type": ["integer", "boolean"]}}},
    },
}
#: the `extra` section: an image model's input conventions (public, see `threat.PUBLIC_METADATA`)
EXTRA = {
    "type": "object",
    "properties": {
        "input_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "maxItems": 3},
        "normalisation": {"type": "object", "properties": {"mean": {"type": "array", "items": {"type": "number"}},
                                                           "std": {"type": "array", "items": {"type": "number"}}}},
        "pixel_range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    },
}
KNOWLEDGE_PROPERTIES = {
    "batch_size": _nullable({"type": "integer", "minimum": 1, "maximum": LIMITS["batch_size"]}),
    "seq_lengths": _nullable({"type": "array", "maxItems": LIMITS["batch_size"],
                              "items": {"type": "integer", "minimum": 1, "maximum": LIMITS["seq_length"]}}),
    "labels": _nullable({"type": "array", "maxItems": LIMITS["batch_size"],
                         "items": {"anyOf": [NAT, {"type": "array", "items": NAT}]}}),
    "mask_positions": _nullable({"type": "array", "maxItems": LIMITS["batch_size"],
                                 "items": {"type": "array", "items": NAT}}),
    "special_tokens": {"type": "boolean"},
}


def knowledge_schema() -> dict:
    from .threat import Knowledge

    known = {f.name for f in fields(Knowledge)}
    props = {k: v for k, v in KNOWLEDGE_PROPERTIES.items() if k in known}
    props.update({k: {} for k in known - set(props)})  # a field added later: any JSON value
    return {"type": "object", "properties": props, "additionalProperties": False}


def metadata_schema(modality: str) -> dict:
    return {
        "type": "object", "required": ["format", "version", "modality", "model", "knowledge"],
        "properties": {
            "format": {"const": "textleak.gradients"}, "version": INT, "modality": {"enum": ["text", "image"]},
            "model": IMAGE_MODEL if modality == "image" else TEXT_MODEL, "knowledge": knowledge_schema(),
            "capture": CAPTURE, "extra": EXTRA,
            "versions": {"type": "object", "additionalProperties": STR}, "created": STR,
        },
    }


REFERENCE = {
    "type": "object", "required": ["format", "modality"], "additionalProperties": False,
    "properties": {
        "format": {"const": "textleak.reference"}, "version": {"const": 1}, "modality": {"enum": ["text", "image"]},
        "labels": {"type": "array"}, "texts": _nullable({"type": "array", "items": STR}),
        "token_ids": _nullable({"type": "array", "items": {"type": "array", "items": NAT}}),
        "masked_input_ids": _nullable({"type": "array", "items": {"type": "array", "items": NAT}}),
        "images": _nullable({"type": "array", "items": {"type": "array"}}), "extra": {"type": "object"},
    },
}

_NUM = {"type": ["number", "null"]}
#: what resuming needs of a results line: its unit's key
#: a line of a recipe's resumable JSONL (one record per finished unit, found again by its key)
KEYED_RECORD = {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}

#: a line of a Flower audit's records.jsonl (`integrations.flower.LeakageAudit`): one client update
FEDERATION_RECORD = {"type": "object", "required": ["round", "node_id"],
                     "properties": {"round": {"type": "integer"}, "metrics": {"type": ["object", "null"]}}}

SWEEP_KEY = {"type": "object", "required": ["key", "kind"],
             "properties": {"key": {"type": "string", "minLength": 1}, "kind": {"enum": ["attack", "utility"]}}}
#: what merging and reporting need of it
SWEEP_RECORD = {
    "type": "object", "required": ["key", "kind", "defence"],
    "properties": {"key": {"type": "string", "minLength": 1}, "kind": {"enum": ["attack", "utility"]},
                   "defence": STR, "defence_name": STR, "strength": _NUM, "strength_label": _nullable(STR)},
    "if": {"properties": {"kind": {"const": "attack"}}},
    "then": {"required": ["attack", "method", "sentence", "seed", "references", "recovered", "metrics",
                          "per_example", "seconds"],
             "properties": {"attack": STR, "method": STR, "sentence": NAT, "seed": INT,
                            "references": {"type": "array", "items": STR}, "recovered": {"type": "array", "items": STR},
                            "metrics": {"type": "object", "additionalProperties": _NUM},
                            "per_example": {"type": "array", "items": {
                                "type": "object", "required": ["reference_index", "prediction_index"],
                                "properties": {"reference_index": NAT, "prediction_index": {"type": "integer",
                                                                                            "minimum": -1},
                                               "rouge1": _NUM, "rouge2": _NUM, "rougeL": _NUM}}},
                            "seconds": {"type": "number", "minimum": 0}}},
    "else": {"required": ["accuracy"], "properties": {"accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                                                      "epsilon": _NUM}},
}


# -- checking --------------------------------------------------------------------------------------
_VALIDATOR_CLASS = None


def _validator(schema: dict):
    global _VALIDATOR_CLASS
    if _VALIDATOR_CLASS is None:
        from jsonschema import Draft202012Validator, validators

        def strict_int(checker, instance) -> bool:
            return isinstance(instance, int) and not isinstance(instance, bool)

        checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", strict_int)
        _VALIDATOR_CLASS = validators.extend(Draft202012Validator, type_checker=checker)
    return _VALIDATOR_CLASS(schema)


def _where(root: str, path) -> str:
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def first_error(doc: Any, schema: dict, root: str) -> str | None:
    """'root.a.b[2]: what is wrong' for the most relevant violation, or None."""
    from jsonschema.exceptions import best_match

    try:
        error = best_match(_validator(schema).iter_errors(doc))
    except RecursionError:
        return f"{root} nests too deeply"
    if error is None:
        return None
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{_where(root, error.absolute_path)}: {message}"


def check(doc: Any, schema: dict, root: str, *, error=InputError, source: str = "") -> None:
    problem = first_error(doc, schema, root)
    if problem:
        raise error(f"{source}: {problem}" if source else problem)


def parse_json(text: str, what: str, *, error=InputError, limit: int = LIMITS["metadata_chars"]) -> Any:
    if not isinstance(text, str):
        raise error(f"{what} is not a JSON string")
    if len(text) > limit:
        raise error(f"{what} is {len(text)} characters long; at most {limit} are read")
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{what} nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def check_knowledge(knowledge: Mapping[str, Any], model: Mapping[str, Any], where: str, *, error=InputError) -> None:
    """Sizes that must agree with each other: batch size, lengths, labels, masked positions."""
    b = knowledge.get("batch_size")
    lengths, labels, masks = (knowledge.get(k) for k in ("seq_lengths", "labels", "mask_positions"))
    for name, value in (("seq_lengths", lengths), ("labels", labels), ("mask_positions", masks)):
        if value is not None and b is not None and len(value) != b:
            raise error(f"{where}.{name} has {len(value)} entries for batch_size {b}")
    if lengths is not None and sum(lengths) > LIMITS["tokens"]:
        raise error(f"{where}.seq_lengths add up to {sum(lengths)} tokens; at most {LIMITS['tokens']} are attacked")
    if masks is not None and lengths is not None:
        for i, (pos, n) in enumerate(zip(masks, lengths)):
            if any(p >= n for p in pos):
                raise error(f"{where}.mask_positions[{i}] has a position past its length {n}")
    task, classes = model.get("task"), model.get("num_labels")
    if labels is not None and task == "classify":
        bad = [y for y in labels if not isinstance(y, int) or (classes and y >= classes)]
        if bad:
            raise error(f"{where}.labels holds {bad[0]!r}, not a class of the {classes}-class model")
    if labels is not None and task == "mlm":
        if any(not isinstance(y, list) for y in labels):
            raise error(f"{where}.labels must list the masked token ids of each example (masked-LM)")
        if masks is not None and any(len(y) != len(p) for y, p in zip(labels, masks)):
            raise error(f"{where}.labels and mask_positions disagree on how many tokens each example masks")


def check_metadata(metadata: Any, source: str, *, error=InputError) -> dict:
    """The whole metadata object: schema, version, then sizes; returns it."""
    from .gradients import FORMAT, FORMAT_VERSION

    if not isinstance(metadata, dict):
        raise error(f"{source}: metadata is a JSON {type(metadata).__name__}, not an object")
    if metadata.get("format") != FORMAT:
        raise error(f"{source} is not a textleak gradient file (metadata format {metadata.get('format')!r})")
    version = metadata.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        kind = "" if isinstance(version, int) and not isinstance(version, bool) else f" (a JSON {type(version).__name__})"
        raise error(f"{source} has gradient format version {version!r}{kind}; this textleak reads version "
                    f"{FORMAT_VERSION}")
    modality = metadata.get("modality")
    check(metadata, metadata_schema(modality if modality in ("text", "image") else "text"), "metadata",
          error=error, source=source)
    model = metadata["model"]
    check_knowledge(metadata["knowledge"], model, f"{source}: metadata.knowledge", error=error)
    if modality == "image":
        shape = model.get("input_shape") or [3, 32, 32]
        batch = metadata["knowledge"].get("batch_size") or 1
        if batch * shape[0] * shape[1] * shape[2] > LIMITS["pixels"]:
            raise error(f"{source}: a batch of {batch} images of {shape} is larger than textleak attacks")
    return metadata
