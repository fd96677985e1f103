"""vLLM engine glue.

Config hook and start-up checks, scheduler, per-step plan, model runner and
worker, block-causal attention, model classes, engine-process safety nets.
Never imports `convert` or the reference decoder.
"""
