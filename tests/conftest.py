import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Deterministic CPU numerics for the equivalence tests.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
