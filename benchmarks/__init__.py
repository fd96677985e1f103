"""Side-by-side benchmarks: SDAR in vLLM vs stock autoregressive vLLM vs the
reference decoder, all measured in one run on one machine (see README.md).

Run with `python -m benchmarks.run [--quick] [--out benchmarks/results]`.
"""
