"""Producer tools: export, bench and report commands (heavy imports stay inside them)."""
