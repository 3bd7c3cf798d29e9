"""Prefect flows: order the work, hold the per-cluster lock, publish artifacts. Policy lives here; how to do one
thing lives in hciupgrade."""
