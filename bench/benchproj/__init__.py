"""Benchmark-only Django app and settings: extra consumers next to the demo's, for comparison.

Not part of heartbeat_app and not used by the demo or the tests.
"""
