"""The benchmarks behind docs/benchmarks.md.

Run each from the repository root as a module, e.g. ``.venv/bin/python -m bench.pingpong``
(``python -m bench.run_all`` runs them all). ``bench.benchlib`` holds what they share.
"""
