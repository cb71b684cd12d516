"""The config of a synthetic benchmark KB: fake embedder, Edge store, everything under root."""

from __future__ import annotations

from pathlib import Path

CONFIG = """\
[kb]
name = "bench"
[corpus]
path = "corpus"
[[spaces]]
name = "local"
provider = "fake"
model = "fake-hash"
dim = {dim}
[store]
backend = "edge"
path = "state/store"
[manifest]
path = "state/manifest.duckdb"
[snapshots]
root = "state/snapshots"
"""


def write_synthetic_config(root: Path, dim: int) -> Path:
    """Write ``root/kbguard.toml`` (and an empty corpus folder) and return its path."""
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    path = root / "kbguard.toml"
    path.write_text(CONFIG.format(dim=dim))
    return path
