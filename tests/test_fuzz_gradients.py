"""Property-based fuzz of the gradient-file reader (hypothesis), issue #12.

Property: for any file, `load_gradients` gives a valid GradientFile or raises TextleakError (one
line); never another exception, and never more than a set amount of memory.

Memory is bounded by construction and measured. By construction: the reader refuses compressed
records and any tensor table larger than the file (tensors are stored uncompressed, so they cannot
claim more bytes than the file holds), and caps the pickle (16 MiB) and the metadata (4 MiB)
before reading them; the child checks, for every file that loads, that its tensors hold at most
the file's size. Measured: the fuzz runs in a child process (tests/_fuzz_gradients_child.py)
whose peak resident memory (ru_maxrss, which counts torch's allocations too) over every example,
bombs included, must stay within PEAK_GROWTH_MIB of its peak after start-up and a first load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = 120
PEAK_GROWTH_MIB = 64


def test_gradient_reader_fuzz_gives_a_file_or_one_line_and_bounded_memory():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_fuzz_gradients_child.py"), str(MAX_EXAMPLES)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["examples"] >= MAX_EXAMPLES // 2  # hypothesis may stop early only on exhausted input
    assert report["peak_mib"] - report["baseline_mib"] <= PEAK_GROWTH_MIB, report
