"""hci-upgrade: upgrade Azure Stack HCI clusters from 22H2 to 23H2, node by node, as Prefect flows.

The domain package imports neither prefect nor flows/tasks. Layers (imports point down only):
models, psenums -> remote -> cluster -> gates; sim/ is the simulated cluster behind a fake WinRM endpoint.
"""

__version__ = "0.1.0"
