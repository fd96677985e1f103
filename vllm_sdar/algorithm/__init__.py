"""The SDAR algorithm and its oracle.

Pure tensor decoding rules (`decoding`, `logit_rules`, `grammar_rule`), HF
configs and option parsing (`config`): none of these import vLLM. The
reference decoder (`reference`, `hf_model`) and the constraint compiler it
shares with the front end (`grammar_compile`) read a few of vLLM's pure
helpers and data classes; nothing here imports the engine glue.
"""
