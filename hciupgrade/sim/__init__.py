"""The simulated cluster: a pure state machine with a clock (cluster.py), the cmdlets that read it and ask it for
changes (cmdlets/, by area), and the thin I/O around it: a fake WinRM endpoint per node (winrm.py); harness.py
starts them together, arm.py is the simulated Azure beside them. The simulator does not know whether a demo, a
test or a benchmark drives it. It stays inside the domain package (hciupgrade/sim/) for now: nothing outside it
and cli/simulate.py imports it, so it can become a top-level package without touching the rest."""
