"""hci-upgrade: upgrade Azure Stack HCI clusters from 22H2 to 23H2, node by node, as Prefect flows.

The domain package imports neither prefect nor flows/, tasks/ or cli/. Its rooms, imports pointing down only:

    net, psenums, models (inventory, options, outcomes), azure/target  - what the operator gives
    remote/ (the PowerShell session and its errors) -> cluster (typed cluster operations, one cmdlet each)
    records/ (recorder, store, reports, narration)                       - what a run leaves
    upgrade/ (runbook, positions, gates, preflight, steps, rolling, offline, postos)  - the upgrade itself
    readiness/, azure/ (the solution upgrade through ARM), survey, fleet, windows
    sim/ - the simulated cluster and Azure behind fake endpoints; nothing above imports it
"""

__version__ = "0.1.0"
