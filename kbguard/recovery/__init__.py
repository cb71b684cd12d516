"""Recovery: snapshots (create, list, verify, prune) and restores."""
