"""Tools beside the plugin.

Tiny random-weight checkpoints, the self-check, and a server-process helper
shared by tests and benchmarks.
"""
