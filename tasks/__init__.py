"""Prefect tasks: one step on one node each, with retries on transient remoting failures."""
