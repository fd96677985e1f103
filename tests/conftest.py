"""Shared fixtures: tiny checkpoints built once per session, fixture paths."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vllm_sdar.tools.tiny import ASSETS, TinySpec, build

REPO = Path(__file__).resolve().parent.parent
# The real SDAR-4B-Chat data files: the shared copy when this checkout sits
# beside it, else the copy vendored in the package (identical, see
# test_config.py::test_vendored_fixture_matches_shared).
SHARED_FIXTURE = REPO.parent / "shared" / "fixtures" / "sdar-4b-chat"
FIXTURE = SHARED_FIXTURE if SHARED_FIXTURE.is_dir() else ASSETS

# vLLM caches model inspection; keep it out of the user's home and fresh.
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
# In-process engine core: starts in seconds instead of ~40 s, and lets tests
# observe the real scheduler (forward counts, preemptions).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


def tiny_checkpoint(name: str, spec: TinySpec) -> Path:
    # The spec is part of the name so a changed spec never reuses stale weights.
    digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:10]
    cache = REPO / ".cache" / "tiny" / f"{name}-{digest}"
    if not (cache / "model.safetensors").exists():
        build(cache, spec)
    return cache


@pytest.fixture(scope="session")
def tiny_dense() -> Path:
    return tiny_checkpoint("dense-b4", TinySpec(arch="dense", block_size=4))


@pytest.fixture(scope="session")
def tiny_dense_b8() -> Path:
    return tiny_checkpoint("dense-b8", TinySpec(arch="dense", block_size=8, seed=1))


@pytest.fixture(scope="session")
def tiny_moe() -> Path:
    return tiny_checkpoint("moe-b4", TinySpec(arch="moe", block_size=4, seed=2))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Model-Runner-V2-only tests leave the V1 pass (deselected, not skipped):
    they run in scripts/test.sh's MRV2 pass (tests/mrv2.md)."""
    if os.environ.get("VLLM_SDAR_TEST_MRV2") == "1":
        return
    keep = [i for i in items if i.get_closest_marker("mrv2_only") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
