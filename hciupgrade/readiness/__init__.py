"""Readiness for the solution upgrade: the environment checker's results, read from nodes or files, summarised
with pandas from node to fleet, decided by the real rule, and remediated where that can be done remotely."""
