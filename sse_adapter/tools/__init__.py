"""The CLI's tools: probe, the demo and its model server, the end-client reader, the
One-API relay model and the quirk namer. Nothing but cli.py imports them."""
