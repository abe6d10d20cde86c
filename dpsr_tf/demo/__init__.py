"""Scaffolding: the seeded synthetic catalog and sessions, and the demo's server processes.

Only the CLI (`dpsr generate`, `dpsr demo`), tests and benchmarks import these modules; the
product packages never do (tests/architecture/test_import_layers.py checks it).
  synthetic_catalog   the seeded synthetic catalog (demo default) with its ground truth
  synthetic_taxonomy  the category tree and word pools the catalog draws from
  synthetic_sessions  seeded search sessions for the re-ranker
  server_processes    `dpsr serve` / `dpsr proxy` started as child processes, with their ports
  serving_demo        the serving half of `make demo`: servers up, queries through the proxy
"""
