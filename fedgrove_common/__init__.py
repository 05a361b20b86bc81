"""The bottom layer that both the aggregation server and the pipeline may use: storage helpers (S3 plumbing,
name rules, atomic local writes), the BranchKey archive's protocol constants, FedAvg arithmetic and child
processes.

It imports nothing from `aggregator`, `fedgrove`, `flows` or `tasks`: everything above may depend on it, it
on none of them.
"""
