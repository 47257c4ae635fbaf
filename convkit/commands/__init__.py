"""One module per CLI command group; each exposes a click command."""
