"""Front-end glue.

Request fields and validation, short names, response terms and metrics,
the `vllm-sdar` CLI, server lifecycle, Ray Serve deployment.
"""
