"""The benchmarks (see BENCHMARKS.md): each `bench/<name>.py` is a script, run as `python bench/<name>.py`.

Shared pieces, by concern: `procs` (the process harness of tests/harness.py as the benchmarks use it, and
what they read off served processes), `stats` (percentiles, latency splits, CPU stolen by the hypervisor),
`load` (the load clients, each its own process), `seed` (rows and events written straight into the schema),
`spy` (py-spy samples). Their extra dependencies are the `bench` extra in pyproject.toml.
"""
