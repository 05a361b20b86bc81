"""fedgrove's pipeline library: the federation spec, reading a site's table, federated preprocessing, the
model, metrics and the in-memory simulation. Pure functions and small I/O; the Prefect tasks (`tasks/`) and
flows (`flows/`) wrap them, and it imports neither (nor the aggregation server)."""
