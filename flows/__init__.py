"""Prefect flows: thin wiring that puts the tasks in order."""
