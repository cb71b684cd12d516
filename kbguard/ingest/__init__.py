"""Ingest: corpus -> documents -> elements -> chunks -> embeddings -> points (scan, parse, chunk,
plan, rebuild)."""
