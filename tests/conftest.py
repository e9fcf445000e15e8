import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Deterministic CPU numerics for the equivalence tests: at most 2 threads, and under pytest-xdist (pytest.ini
# runs two worker processes) the cores this process may use shared among the workers, so that they do not
# oversubscribe the CPU. Subprocesses the tests start (the command-line tests) get the same count.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # (macOS: no affinity)
THREADS = max(1, min(2, CPUS // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def load_manifest(name: str) -> dict:
    """A key/shape manifest of a real checkpoint format (copied from shared/reference/checkpoints)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def manifest_state(name: str, keys: str = "keys") -> dict[str, torch.Tensor]:
    """Meta tensors with the manifest's names and shapes: a full-size file without any weights."""
    m = load_manifest(name)
    return {k: torch.empty(shape, device="meta") for k, shape in m[keys].items()}


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
