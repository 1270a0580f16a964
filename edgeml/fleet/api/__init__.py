"""HTTP routers, one module per area; :func:`edgeml.fleet.app.create_app` mounts them all."""
