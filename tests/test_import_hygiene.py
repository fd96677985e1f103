"""The runtime needs only the base dependencies and vLLM (issue 19).

`ray` is the `ray` extra, `peft` the `train` extra (LoRA fine-tuning only);
pytest, hypothesis, matplotlib are test or
benchmark tools. Each check runs in a fresh interpreter in which importing
those packages fails as if they were not installed, and asserts that the
plugin registers (in every vLLM process) and that every runtime module of
the package imports. The Ray patch must not import Ray at registration, and
must still apply the moment vLLM imports its Ray executor.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Packages of the optional extras that vLLM itself does not require (openai
# and requests are in the `test` extra too, but vLLM depends on them, so they
# are present in every install).
OPTIONAL = ("ray", "pytest", "hypothesis", "matplotlib", "peft")
# Modules that belong to the `ray` extra by design (they import Ray).
RAY_MODULES: tuple[str, ...] = ()  # none: ray_cpu imports Ray only when its patch is applied

BLOCKER = """
import importlib.abc, importlib.machinery, sys

class _Missing(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Missing())
        return None

sys.meta_path.insert(0, _Block())
"""


def _run(code: str, cwd: Path, blocked: tuple[str, ...] = ()) -> str:
    script = f"BLOCKED = {set(blocked)!r}\n{BLOCKER}\n{textwrap.dedent(code)}"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_blocker_hides_a_package(tmp_path: Path) -> None:
    # The harness itself: a blocked package must fail to import.
    out = _run(
        """
        try:
            import pytest
        except ModuleNotFoundError:
            print("missing")
        """,
        tmp_path,
        OPTIONAL,
    )
    assert out.strip() == "missing"


def test_register_needs_no_optional_package(tmp_path: Path) -> None:
    out = _run(
        """
        import multiprocessing, sys
        import vllm_sdar

        vllm_sdar.register()  # a front end (MainProcess) imports the most
        multiprocessing.current_process().name = "EngineCore_DP0"
        vllm_sdar.register()  # idempotent, and the engine-process path
        from vllm.platforms import current_platform

        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        print("vllm.v1.executor.ray_executor_v2" in sys.modules)
        print(current_platform.ray_device_key)
        """,
        tmp_path,
        OPTIONAL,
    )
    loaded, executor, key = out.strip().splitlines()[-3:]
    assert loaded == "[]"
    assert executor == "False"
    assert key == "vllm_cpu"


def test_every_runtime_module_imports_without_optional_packages(tmp_path: Path) -> None:
    out = _run(
        f"""
        import importlib, pkgutil
        import vllm_sdar

        for info in pkgutil.walk_packages(vllm_sdar.__path__, "vllm_sdar."):
            if info.name in {RAY_MODULES!r}:
                continue
            try:
                importlib.import_module(info.name)
            except Exception as e:
                print("FAILED", info.name, type(e).__name__, e)
            else:
                print("ok", info.name)
        """,
        tmp_path,
        OPTIONAL,
    )
    assert "FAILED" not in out, out
    # The walk really covered the engine, serving and algorithm layers.
    for module in ("engine.scheduler", "engine.runner", "serving.cli", "algorithm.reference"):
        assert f"ok vllm_sdar.{module}" in out


def test_ray_patch_applies_when_vllm_imports_its_ray_executor(tmp_path: Path) -> None:
    # With Ray installed (the `ray` extra of the test environment).
    out = _run(
        """
        import sys
        import vllm_sdar

        vllm_sdar.register()
        # vLLM's engine imports Ray itself where installed; the executor
        # module (what the patch replaces parts of) is not imported yet.
        print("vllm.v1.executor.ray_executor_v2" in sys.modules)
        from vllm.v1.executor import ray_executor_v2
        from vllm_sdar.engine.ray_cpu import CpuRayWorkerProc

        print(ray_executor_v2.RayWorkerProc is CpuRayWorkerProc)
        print(ray_executor_v2.initialize_ray_cluster.__qualname__)
        """,
        tmp_path,
    )
    executor_at_register, patched, init = out.strip().splitlines()[-3:]
    assert executor_at_register == "False"
    assert patched == "True"
    assert init.startswith("_checked.")
