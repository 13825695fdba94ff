"""Tools on trajectory files: `sae recompute` (recompute), `sae inspect` (summary), `sae report`
(report) and the `sae` command line (cli).

They read the public API, the registry and the trajectory standard, and nothing above them.
"""
