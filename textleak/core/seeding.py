"""Seeds and state that a run must leave as it found them (RNG streams, train/eval mode), and
the settings that make a run repeat bit for bit (`repeatable`, `determinism_settings`).

What decides whether two runs with one seed give the same bits on CPU: the seed of every RNG the
run draws from (attacks draw from their own seeded generators; `repeatable` also seeds the global
ones), the number of torch threads (a parallel reduction splits its sum by thread, so 1 and 2
threads round differently), the kernels (deterministic algorithms on; oneDNN and cuDNN told to be
deterministic), the instruction set torch dispatches to (AVX2 vs AVX-512 kernels round
differently) and the library versions. `determinism_settings()` records all of them in results.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python, NumPy and torch RNG states on exit, so a library call leaves no trace."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with all global RNGs seeded, then put the caller's RNG states back."""
    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, *, train: bool) -> Iterator[torch.nn.Module]:
    """Put a model in train or eval mode for a block and restore every submodule's own mode."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.train(train)
    try:
        yield model
    finally:
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


#: environment variables that change thread counts or kernels between otherwise identical runs
DETERMINISM_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")
#: cuBLAS needs a fixed workspace for deterministic matrix products (see torch's reproducibility notes)
CUBLAS_WORKSPACE = ":4096:8"


def determinism_settings(seed: int | None = None) -> dict[str, Any]:
    """What a rerun must match to repeat this run bit for bit (library versions are recorded apart)."""
    settings: dict[str, Any] = {} if seed is None else {"seed": seed}
    settings.update(
        torch_threads=torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(),
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        mkldnn_deterministic=bool(getattr(torch.backends.mkldnn, "deterministic", False)),
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        env={k: os.environ.get(k) for k in DETERMINISM_ENV},
    )
    return settings


@contextlib.contextmanager
def repeatable(seed: int) -> Iterator[dict[str, Any]]:
    """Run a block as repeatably as torch allows and put every global setting back afterwards.

    Global RNGs are seeded (`seeded`); deterministic algorithms are switched on (warning, not
    failing, where an op has no deterministic version: on CUDA, e.g. some scatter-adds); oneDNN
    and cuDNN use deterministic kernels and cuDNN does not benchmark (its autotuner picks kernels
    by timing). The thread count is left as the caller set it, and recorded. Yields the settings
    in force, for the result.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                getattr(torch.backends.mkldnn, "deterministic", None), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if previous[5] is None:  # read when cuBLAS makes its first handle: set before any CUDA work here
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    try:
        if not previous[0]:  # keep a caller's strict (erroring) setting
            torch.use_deterministic_algorithms(True, warn_only=True)
        if previous[2] is not None:
            torch.backends.mkldnn.deterministic = True
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        with seeded(seed):
            yield determinism_settings(seed)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        if previous[2] is not None:
            torch.backends.mkldnn.deterministic = previous[2]
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[3], previous[4]
        if previous[5] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
