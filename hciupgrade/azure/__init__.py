"""Azure Resource Manager: the client, the resources, the solution upgrade and the solution updates."""
