"""Language-model priors for text attacks (LAMP's fluency term), chosen by name.

`PRIORS.get(name)(tokenizer)` returns a prior with `nll(token_ids) -> float`, the mean negative
log-likelihood per token of one sentence (special tokens included as given).

- "bigram": an interpolated bigram model over the attack model's own token ids, fitted on the
  training sentences in $TEXTLEAK_PRIOR_DATA (default: train_*.tsv in the shared data folder, see textleak.data) and cached
  under ~/.cache/textleak. It is a stand-in for the GPT-2 prior of LAMP, honest about being much
  weaker; it sees only training splits, never the sentences under attack.
- "hf:<name>": any causal LM the HF cache holds (e.g. "hf:gpt2"), scoring the decoded text.
- "none": no prior.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import pickle
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data import shared_file
from ..errors import InputError, OutputError
from ..io import atomic_write
from ..registry import Registry

PRIORS: Registry[Callable[[Any], Any]] = Registry("language prior")


def prior_files() -> list[str]:
    """The training TSVs the priors are fitted on ($TEXTLEAK_PRIOR_DATA, a glob; default train_*.tsv
    in the shared data folder), sorted."""
    return sorted(glob.glob(os.environ.get("TEXTLEAK_PRIOR_DATA") or shared_file("train_*.tsv")))


def cache_dir() -> Path:
    """Where fitted priors are cached ($TEXTLEAK_CACHE, default ~/.cache/textleak)."""
    return Path(os.environ.get("TEXTLEAK_CACHE", Path.home() / ".cache" / "textleak"))


def read_cached(path: Path, keys: Sequence[str]) -> dict | None:
    """The fitted prior cached at `path` (a dict of tensors holding every one of `keys`), or None
    where there is none or it cannot be read: a truncated or foreign file is fitted again, with a
    line on stderr, never a traceback."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        print(f"textleak: the cached prior {path} cannot be read ({why}); fitting it again", file=sys.stderr, flush=True)
        return None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), torch.Tensor) for k in keys):
        print(f"textleak: the cached prior {path} lacks its fitted tensors; fitting it again", file=sys.stderr, flush=True)
        return None
    return data


def write_cached(path: Path, data: dict) -> None:
    """Cache a fitted prior: written to a temporary file and renamed into place, so that a process
    reading it (or two fitting it at once) never sees half a file; a cache that cannot be written
    costs a refit next time and a line on stderr, not the attack."""
    try:
        atomic_write(path, lambda tmp: torch.save(data, tmp))
    except OutputError as exc:
        print(f"textleak: the fitted prior is not cached ({exc}); it will be fitted again next time",
              file=sys.stderr, flush=True)


def training_texts(path: str | Path) -> list[str]:
    """The sentences of one training TSV: the first column of each non-blank row after the header."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return [ln.split("\t")[0] for ln in lines if ln.strip()]


class NoPrior:
    name = "none"

    def nll(self, token_ids: Sequence[int]) -> float:
        return 0.0


class BigramPrior:
    """p(w | v) = lam * c(v, w) / c(v) + (1 - lam) * (c(w) + 1) / (N + V)."""

    name = "bigram"

    def __init__(self, tokenizer: Any, files: Sequence[str], lam: float = 0.7):
        self.lam = lam
        self.vocab = len(tokenizer)
        key = hashlib.sha256(("|".join(sorted(files)) + tokenizer.name_or_path + str(self.vocab)).encode()).hexdigest()[:16]
        cache = cache_dir() / f"bigram-{key}.pt"
        data = read_cached(cache, ("uni", "bi"))
        if data is not None:
            self.uni = Counter(dict(data["uni"].tolist()))
            self.bi = Counter({(a, b): c for a, b, c in data["bi"].tolist()})
        else:
            self.uni, self.bi = Counter(), Counter()
            for path in files:
                for ids in tokenizer(training_texts(path))["input_ids"]:
                    self.uni.update(ids)
                    self.bi.update(zip(ids[:-1], ids[1:]))
            write_cached(cache, {"uni": torch.tensor(list(self.uni.items())),
                                 "bi": torch.tensor([[a, b, c] for (a, b), c in self.bi.items()])})
        self.total = sum(self.uni.values())

    def logp(self, v: int, w: int) -> float:
        uni = (self.uni.get(w, 0) + 1) / (self.total + self.vocab)
        cv = self.uni.get(v, 0)
        bi = self.bi.get((v, w), 0) / cv if cv else 0.0
        return math.log(self.lam * bi + (1 - self.lam) * uni)

    def nll(self, token_ids: Sequence[int]) -> float:
        ids = list(token_ids)
        if len(ids) < 2:
            return 0.0
        return -sum(self.logp(v, w) for v, w in zip(ids[:-1], ids[1:])) / (len(ids) - 1)


class CausalLMPrior:
    """Perplexity of the decoded text under a cached HF causal LM (LAMP used GPT-2)."""

    def __init__(self, tokenizer: Any, model_name: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"hf:{model_name}"
        self.source_tokenizer = tokenizer
        try:
            safe = {"local_files_only": True, "trust_remote_code": False}  # never a model's own code
            self.lm = AutoModelForCausalLM.from_pretrained(model_name, **safe).eval()
            self.lm_tokenizer = AutoTokenizer.from_pretrained(model_name, **safe)
        except OSError:
            raise InputError(f"language prior {model_name!r} is not in the local HF cache; "
                             "use prior='bigram' or download it where there is network") from None
        except (ValueError, pickle.UnpicklingError) as exc:  # custom code asked for, unsafe .bin weights
            line = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise InputError(f"cannot load language prior {model_name!r}: {line[:200]}") from None

    def nll(self, token_ids: Sequence[int]) -> float:
        text = self.source_tokenizer.decode(list(token_ids), skip_special_tokens=True)
        ids = self.lm_tokenizer(text, return_tensors="pt")["input_ids"]
        if ids.shape[1] < 2:
            return 0.0
        with torch.no_grad():
            return float(self.lm(ids, labels=ids).loss)


_BIGRAMS: dict[tuple, BigramPrior] = {}


def bigram_prior(tokenizer: Any) -> BigramPrior:
    """The bigram prior over the training TSVs, built (or read from the disk cache) once per process:
    `auto` checks that it exists and LAMP then uses it, for every sentence of an audit."""
    files = prior_files()
    key = (tuple(files), tokenizer.name_or_path, len(tokenizer), str(cache_dir()))
    if key not in _BIGRAMS:
        _BIGRAMS[key] = BigramPrior(tokenizer, files)
    return _BIGRAMS[key]


PRIORS.register("none")(lambda tokenizer: NoPrior())
PRIORS.register("bigram")(bigram_prior)


def load_prior(name: str, tokenizer: Any):
    if name.startswith("hf:"):
        return CausalLMPrior(tokenizer, name[3:])
    prior = PRIORS.get(name)(tokenizer)
    if isinstance(prior, BigramPrior) and prior.total == 0:
        raise InputError("the bigram prior found no training sentences; set TEXTLEAK_PRIOR_DATA to a glob of "
                         "TSV files (sentence<TAB>label) or use prior='none'")
    return prior
