"""The SDAR algorithm and its oracle.

Pure tensor decoding rules (`decoding`, `logit_rules`), HF configs and
option parsing (`config`), and the reference decoder (`reference`,
`hf_model`). Nothing here imports vLLM or the engine glue.
"""
