"""The upgrade of one cluster against a real (or simulated) cluster: the rolling engine (rolling.py), the step
registry (runbook.py), each step's code (steps.py), what a node needs (positions.py), preflight and plan
(preflight.py), the safety gates (gates.py), the offline path (offline.py) and the post-OS steps (postos.py)."""
