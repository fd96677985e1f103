"""Where vLLM 0.32, 0.33 and 0.34 differ at a place the plugin touches.

Every version branch of the plugin is here, each listed in
patches/README.md ("Version branches") with the versions it serves;
`python -m vllm_sdar.tools.compat` checks every touch point against a
vLLM source tree. Branches test for the API itself (an attribute, a
parameter), not for a version number, so a patch release that back-ports
a change takes the right branch.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

# The minor versions this plugin was checked against (tools/compat.py).
SUPPORTED_MINORS = ("0.32", "0.33", "0.34")


def uses_model_runner_v2(vllm_config: Any) -> bool:
    """vLLM's own runner choice. 0.34 has only Model Runner V2 (the
    property is gone); 0.32 / 0.33 pick V2 where Triton runs, or as told
    by VLLM_USE_V2_MODEL_RUNNER."""
    return bool(getattr(vllm_config, "use_v2_model_runner", True))


def new_request_data(request: Any, block_ids: Any, for_v2: bool) -> Any:
    """A request's first (or, under MRV2, resumed) appearance on the workers.

    MRV2 fills its token rows from `prefill_token_ids` (a resumed request
    carries its final output too); 0.34 makes the field required.
    """
    from vllm.v1.core.sched.output import NewRequestData

    return NewRequestData.from_request(
        request,
        block_ids,
        prefill_token_ids=list(request.all_token_ids) if for_v2 else None,
        uses_mrope=False,
    )


@functools.cache
def _cached_data_takes_resumed(scheduler_cls: type) -> bool:
    # 0.34 dropped the resumed list: MRV2 re-sends resumed requests as new.
    params = inspect.signature(scheduler_cls._make_cached_request_data).parameters
    return "resumed_reqs" in params


def cached_request_data(
    scheduler: Any,
    running: list[Any],
    resumed: list[Any],
    num_scheduled: dict[str, int],
    new_blocks: dict[str, Any],
) -> Any:
    if _cached_data_takes_resumed(type(scheduler)):
        return scheduler._make_cached_request_data(running, resumed, num_scheduled, {}, new_blocks)
    assert not resumed, "vLLM without V1 runner: resumed requests go out as new ones"
    return scheduler._make_cached_request_data(running, num_scheduled, {}, new_blocks)


def output_index(output: Any) -> dict[str, int]:
    """Request id -> row of a ModelRunnerOutput (0.34 dropped
    `req_id_to_index`; `req_ids` is in every version)."""
    return {req_id: i for i, req_id in enumerate(output.req_ids)}
