"""Benchmark studies of the SDAR plugin, each a thin module over one harness
(`benchmarks.harness`): `python -m benchmarks.<study> [--quick]`. See
benchmarks/README.md for what each measures and the command behind every
figure and table the project cites.
"""
