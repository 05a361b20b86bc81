"""Prefect tasks: each wraps one side effect of the pipeline, with retries where a failure can be transient."""
