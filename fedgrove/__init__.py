"""fedgrove: federated learning across organisations with Prefect flows, a BranchKey-compatible aggregator, AskAnna tracking and S3 artifacts."""
