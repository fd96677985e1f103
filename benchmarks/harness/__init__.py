"""The shared benchmark harness every study in `benchmarks/` runs on (what
each module owns: benchmarks/README.md). Nothing here imports torch or vLLM
at import time: a study sets the process environment (`env.configure`)
before either is imported.
"""
