"""The simulated cluster: a pure state machine with a clock (cluster.py), the cmdlets that read and change it
(cmdlets.py), and the thin I/O around it: a fake WinRM endpoint per node (winrm.py). harness.py starts them together.
The simulator does not know whether a demo, a test or a benchmark drives it."""
