"""An OpenAI-compatible SDAR deployment on Ray Serve LLM (`ray.serve.llm`).

    python -m vllm_sdar.serving.ray_serve MODEL [--replicas 2] [--port 8000]

starts (or joins, with RAY_ADDRESS) a Ray cluster and serves MODEL from
`--replicas` engine replicas behind one OpenAI router on /v1. Each replica
is a stock vLLM engine with the plugin loaded by its entry point: SDAR
options are top-level body fields, a bad one is a 400 naming it, streams
carry one chunk per final block, exactly as `vllm-sdar serve`.

On CPU a replica runs vLLM's `mp` executor (Ray Serve LLM's CPU support);
on GPUs `tensor_parallel_size` in `engine_kwargs` spreads a replica over
GPUs of one placement group (see README "Scale out with Ray").
"""

from __future__ import annotations

import argparse
import os
from typing import Any

# max_model_len is left to vLLM (the model's own limit) unless asked for:
# a fixed default broke small models (sdar-addition has 256 positions).
DEFAULT_ENGINE_KWARGS: dict[str, Any] = {}


def llm_config(
    model: str,
    *,
    model_id: str | None = None,
    min_replicas: int = 2,
    max_replicas: int = 2,
    engine_kwargs: dict[str, Any] | None = None,
    cpu: bool = True,
    cpus_per_replica: float = 0.5,
) -> Any:
    """The Ray Serve `LLMConfig` of one SDAR model.

    Autoscaling between `min_replicas` and `max_replicas` (Ray Serve scales
    on ongoing requests). On CPU a replica and its engine hold
    `cpus_per_replica` of Ray's CPU bookkeeping (the OpenAI router holds
    one more); vLLM's CPU threads are not limited by it.
    """
    from ray.serve.llm import LLMConfig

    kwargs = {**DEFAULT_ENGINE_KWARGS, **(engine_kwargs or {})}
    deployment: dict[str, Any] = {
        "autoscaling_config": {
            "min_replicas": min_replicas,
            "initial_replicas": min_replicas,
            "max_replicas": max_replicas,
        },
    }
    extra: dict[str, Any] = {}
    if cpu:
        # Ray Serve LLM adds the replica actor's CPUs to its engine's bundle;
        # the engine's share is the bundle, the actor itself asks for none.
        deployment["ray_actor_options"] = {"num_cpus": 0}
        extra = {
            "accelerator_config": {"kind": "cpu"},
            "placement_group_config": {"bundles": [{"CPU": cpus_per_replica}]},
        }
    return LLMConfig(
        model_loading_config={
            "model_id": model_id or os.path.basename(model.rstrip("/")),
            "model_source": model,
        },
        engine_kwargs=kwargs,
        deployment_config=deployment,
        # One router is plenty in front of a few replicas (Ray's default is two per replica).
        experimental_configs={"num_ingress_replicas": 1},
        **extra,
    )


def build_app(config: Any) -> Any:
    """The OpenAI app (router + engine replicas) for `serve.run`."""
    from ray.serve.llm import build_openai_app

    return build_openai_app({"llm_configs": [config]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_sdar.serving.ray_serve", description=__doc__
    )
    parser.add_argument("model", help="checkpoint directory or Hub id of an SDAR model")
    parser.add_argument("--replicas", type=int, default=2, help="min replicas (default 2)")
    parser.add_argument("--max-replicas", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--gpu", action="store_true", help="GPU replicas (default: CPU)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    os.environ.setdefault("RAY_worker_niceness", "0")  # noqa: SIM112
    if not args.gpu:
        # The CPU build's KV budget in GiB (its default does not fit small
        # machines); replicas on a local cluster inherit this environment.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(address=os.environ.get("RAY_ADDRESS"))
    serve.start(http_options={"host": args.host, "port": args.port})
    config = llm_config(
        args.model,
        min_replicas=args.replicas,
        max_replicas=args.max_replicas or args.replicas,
        engine_kwargs={
            "tensor_parallel_size": args.tensor_parallel_size,
            "dtype": args.dtype,
            **({"max_model_len": args.max_model_len} if args.max_model_len else {}),
        },
        cpu=not args.gpu,
    )
    serve.run(build_app(config), blocking=True)


if __name__ == "__main__":
    main()
