"""Benchmark studies of the SDAR plugin over one harness (`benchmarks.harness`):
`python -m benchmarks.<study> [--quick]`; benchmarks/README.md says what each
measures and the command behind every figure and table the project cites.
"""
