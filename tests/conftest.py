"""Shared fixtures: tiny random BLIP configs and processors, written to temp dirs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning slows torch several-fold
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny import tiny_config, tiny_processor  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def processor():
    return tiny_processor()


@pytest.fixture(scope="session")
def config(processor):
    return tiny_config(processor.tokenizer)
