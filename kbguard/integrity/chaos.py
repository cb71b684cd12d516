"""Fault injection: damage a KB on purpose, for tests, drills and rehearsals on a scratch copy.

Every action does one kind of damage that `kbguard verify` must name, and nothing else. None of
them records anything in the manifest's run history: real damage is silent, and so is this.

    action            damage                                                   verify finds
    delete-points     delete N points from the store                           missing_points
    add-orphans       add N points the manifest does not know                  orphan_points
    stale-points      give N points the payload of an older text version       stale_points
    flip-bits         flip one bit of one component of N stored vectors        vector_corruption
    flip-file-bits    flip N bits inside the vector files of an Edge shard     vector_corruption
    wrong-model       overwrite N vectors with another model's, which the      wrong_space
                      cache also holds (as a build with that model leaves it)
    poison-cache      overwrite N vectors *and* their cache rows with another  embedding_drift
                      model's (checksums agree; only --deep/--sample sees it)   (with --deep)
    nan-vectors       write N vectors that the store keeps as NaN              invalid_vectors
    zero-vectors      write N all-zero vectors                                 invalid_vectors
    damage-payloads   drop keys from the payloads of N points                  payload_damage
    drift-config      recreate the collection with dot distance, same points   config_drift
    drop-collection   delete the whole collection                              missing_points (all)
    truncate-store    cut the store's metadata files in half                   store_unreadable
    damage-cache      flip a byte in N cached vectors (checksums now fail)     manifest_damage
    drop-cache-rows   delete N cached vectors of chunks in use                 manifest_damage
    damage-manifest   overwrite the DuckDB file's headers                      manifest_damage

Use it only on a copy you can throw away: `cp -a` the store and manifest, point a config at the
copy, and run `kbguard chaos ... --config copy.toml --yes`.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbguard.config import Config, SpaceConfig
from kbguard.errors import ConfigError, StoreError
from kbguard.kb.preflight import Lock, Needs, preflight
from kbguard.manifest import Manifest
from kbguard.store import Point, Store, VectorSpec, vector_specs

OTHER_MODEL = "chaos-other-model"


@dataclass
class ChaosResult:
    action: str
    count: int
    point_ids: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def other_model_space(space: SpaceConfig) -> SpaceConfig:
    """The space of the stand-in 'other model' (same dimension, different identity)."""
    return SpaceConfig(name=space.name, provider="fake", model=OTHER_MODEL, dim=space.dim)


def other_model_vectors(texts: Sequence[str], dim: int) -> np.ndarray:
    """Deterministic unit vectors standing in for a different model's embeddings of ``texts``."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        out[i] = v / np.linalg.norm(v)
    # one more float32 normalisation, so the store keeps the bits exactly as written
    unit: np.ndarray = (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
    return unit


def inject(cfg: Config, action: str, *, count: int = 1, seed: int = 0) -> ChaosResult:
    """Do ``action`` to the KB of ``cfg`` (see the module docstring); holds the KB lock."""
    if action not in ACTIONS:
        raise ConfigError(f"Unknown chaos action {action!r}; use one of {', '.join(ACTIONS)}.")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}.")

    with preflight(cfg, Needs(f"chaos {action}", lock=Lock.WRITE, store=True)) as kb:
        return ACTIONS[action](_Ctx(cfg, kb.store, random.Random(seed), count))


# -- actions ---------------------------------------------------------------------------------

@dataclass
class _Ctx:
    cfg: Config
    store: Store
    rng: random.Random
    count: int

    @property
    def space(self) -> SpaceConfig:
        return self.cfg.spaces[0]

    def pick_points(self, with_vectors: bool = True) -> list[Point]:
        ids = sorted(p.id for page in self.store.scroll(batch_size=1024, with_vectors=False)
                     for p in page)
        if len(ids) < self.count:
            raise StoreError(f"The store holds {len(ids)} points; cannot damage {self.count}.")
        chosen = self.rng.sample(ids, self.count)
        points = {p.id: p for p in self.store.retrieve(chosen, with_vectors=with_vectors)}
        return [points[i] for i in chosen]

    def rewrite(self, points: list[Point]) -> ChaosResult | None:
        self.store.upsert(points)
        self.store.flush()
        return None


def _result(name: str, points: Sequence[Point], **detail: Any) -> ChaosResult:
    return ChaosResult(name, len(points), sorted(p.id for p in points), detail)


def _delete_points(ctx: _Ctx) -> ChaosResult:
    points = ctx.pick_points(with_vectors=False)
    ctx.store.delete([p.id for p in points])
    ctx.store.flush()
    return _result("delete-points", points)


def _add_orphans(ctx: _Ctx) -> ChaosResult:
    donors = ctx.pick_points()
    orphans = []
    for i, p in enumerate(donors):
        pid = str(uuid.UUID(int=ctx.rng.getrandbits(128), version=4))
        payload = dict(p.payload, path=f"gone/orphan-{i}.md")
        orphans.append(Point(pid, dict(p.vectors), payload))
    ctx.rewrite(orphans)
    return _result("add-orphans", orphans)


def _stale_points(ctx: _Ctx) -> ChaosResult:
    points = ctx.pick_points()
    for p in points:
        old_text = "An older version of this section. " + str(p.payload.get("text", ""))[:80]
        p.payload = dict(p.payload, text=old_text,
                         content_hash=hashlib.sha256(old_text.encode()).hexdigest()[:32])
    ctx.rewrite(points)
    return _result("stale-points", points)


def _flip_bits(ctx: _Ctx) -> ChaosResult:
    points = ctx.pick_points()
    name = ctx.space.name
    flips = []
    for p in points:
        v = np.array(p.vectors[name], dtype="<f4")
        raw = v.view("<u4")
        # prefer a component that is not zero; flip a mantissa bit, so the value stays finite
        nonzero = np.flatnonzero(v) if np.any(v) else np.arange(v.size)
        i = int(nonzero[ctx.rng.randrange(nonzero.size)])
        bit = ctx.rng.randrange(23)
        raw[i] ^= np.uint32(1 << bit)
        p.vectors = {**p.vectors, name: v}
        flips.append({"point_id": p.id, "component": i, "bit": bit})
    ctx.rewrite(points)
    return _result("flip-bits", points, flips=flips)


def _vector_files(path: Path) -> list[Path]:
    files = sorted(path.glob("segments/*/vector_storage*/**/chunk_*.mmap"))
    files += sorted(path.glob("segments/*/vector_storage*/**/matrix.dat"))
    return [f for f in files if f.stat().st_size > 0]


def _flip_file_bits(ctx: _Ctx) -> ChaosResult:
    if ctx.cfg.store_backend != "edge" or ctx.cfg.store_path is None:
        raise ConfigError("flip-file-bits works on a Qdrant Edge shard folder only "
                          "(store.backend = \"edge\"); use flip-bits for other stores.")
    n_points = ctx.store.count()
    ctx.store.close()  # the engine must not hold the files while their bytes change
    files = _vector_files(ctx.cfg.store_path)
    if not files or not n_points:
        raise StoreError(f"No vector files with data under {ctx.cfg.store_path}.")
    flips = []
    for _ in range(ctx.count):
        f = files[ctx.rng.randrange(len(files))]
        data = bytearray(f.read_bytes())
        # the used part of a preallocated chunk file ends with its last nonzero byte
        used = len(data.rstrip(b"\0"))
        if used < 4:
            continue
        word = ctx.rng.randrange(used // 4)
        bit = ctx.rng.randrange(23)  # a mantissa bit: the damaged float stays finite
        off = word * 4 + bit // 8
        data[off] ^= 1 << (bit % 8)
        f.write_bytes(bytes(data))
        flips.append({"file": str(f.relative_to(ctx.cfg.store_path)), "offset": off,
                      "bit": bit % 8})
    return ChaosResult("flip-file-bits", len(flips), [], {"flips": flips})


def _wrong_model(ctx: _Ctx, *, cache_as: str) -> ChaosResult:
    points = ctx.pick_points()
    space = ctx.space
    texts = [str(p.payload.get("text", p.id)) for p in points]
    vecs = other_model_vectors(texts, space.dim)
    for p, v in zip(points, vecs, strict=True):
        p.vectors = {**p.vectors, space.name: v}
    ctx.store.close()
    with Manifest.open(ctx.cfg.manifest, kb=ctx.cfg.kb) as manifest, manifest.transaction():
        rows = [(str(p.payload["content_hash"]), v) for p, v in zip(points, vecs, strict=True)]
        manifest.cache.add(cache_as, rows, None)
    ctx.rewrite(points)
    return _result("wrong-model" if cache_as != space.space_id else "poison-cache", points,
                   cached_as=cache_as)


def _nan_or_zero(ctx: _Ctx, kind: str) -> ChaosResult:
    points = ctx.pick_points()
    name, dim = ctx.space.name, ctx.space.dim
    for p in points:
        if kind == "nan":
            # both stores normalise an infinite component into NaNs; Qdrant refuses NaN itself
            v = np.zeros(dim, dtype=np.float32)
            v[0] = np.inf
        else:
            v = np.zeros(dim, dtype=np.float32)
        p.vectors = {**p.vectors, name: v}
    ctx.rewrite(points)
    return _result(f"{kind}-vectors", points)


def _damage_payloads(ctx: _Ctx) -> ChaosResult:
    points = ctx.pick_points()
    for p in points:
        p.payload = {k: v for k, v in p.payload.items() if k not in ("text", "section")}
    ctx.rewrite(points)
    return _result("damage-payloads", points)


def _drift_config(ctx: _Ctx) -> ChaosResult:
    saved = [p for page in ctx.store.scroll(batch_size=1024) for p in page]
    ctx.store.drop()
    ctx.store.create([VectorSpec(s.name, s.dim, "dot") for s in vector_specs(ctx.cfg)])
    for lo in range(0, len(saved), 512):
        ctx.store.upsert(saved[lo:lo + 512])
    ctx.store.flush()
    return ChaosResult("drift-config", 1, [], {"distance": "dot", "points": len(saved)})


def _drop_collection(ctx: _Ctx) -> ChaosResult:
    n = ctx.store.count() if ctx.store.describe().exists else 0
    ctx.store.drop()
    return ChaosResult("drop-collection", n, [], {})


def _truncate_store(ctx: _Ctx) -> ChaosResult:
    ctx.store.close()
    cfg = ctx.cfg
    if cfg.store_path is None:
        raise ConfigError("truncate-store needs a store on local disk (store.path), "
                          "not a Qdrant server.")
    if cfg.store_backend == "edge":
        files = sorted(cfg.store_path.glob("segments/*/segment.json"))
    else:
        files = sorted(cfg.store_path.glob("collection/*/storage.sqlite"))
    if not files:
        raise StoreError(f"No store files to truncate under {cfg.store_path}.")
    for f in files:
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)
    return ChaosResult("truncate-store", len(files), [],
                       {"files": [str(f.relative_to(cfg.store_path)) for f in files]})


def _cache_rows_in_use(manifest: Manifest, space: SpaceConfig, ctx: _Ctx) -> list[str]:
    hashes = manifest.cache.hashes_in_use(space.space_id)
    if len(hashes) < ctx.count:
        raise StoreError(f"The cache holds {len(hashes)} vectors in use; cannot damage "
                         f"{ctx.count}.")
    return ctx.rng.sample(hashes, ctx.count)


def _damage_cache(ctx: _Ctx) -> ChaosResult:
    space = ctx.space
    with Manifest.open(ctx.cfg.manifest, kb=ctx.cfg.kb) as manifest:
        chosen = _cache_rows_in_use(manifest, space, ctx)
        with manifest.transaction():
            for h in chosen:
                blob = bytearray(manifest.cache.raw_bytes(space.space_id, h) or b"")
                blob[ctx.rng.randrange(len(blob))] ^= 0x10
                manifest.cache.overwrite_bytes(space.space_id, h, bytes(blob))
    return ChaosResult("damage-cache", len(chosen), [], {"content_hashes": sorted(chosen)})


def _drop_cache_rows(ctx: _Ctx) -> ChaosResult:
    space = ctx.space
    with Manifest.open(ctx.cfg.manifest, kb=ctx.cfg.kb) as manifest:
        chosen = _cache_rows_in_use(manifest, space, ctx)
        manifest.cache.drop(space.space_id, chosen)
    return ChaosResult("drop-cache-rows", len(chosen), [], {"content_hashes": sorted(chosen)})


def _damage_manifest(ctx: _Ctx) -> ChaosResult:
    ctx.store.close()
    path = ctx.cfg.manifest
    with open(path, "r+b") as fh:
        # the main header and both database headers live in the first 12 KiB
        fh.seek(0)
        fh.write(bytes(ctx.rng.randrange(256) for _ in range(12288)))
    return ChaosResult("damage-manifest", 1, [], {"file": str(path)})


ACTIONS: dict[str, Callable[[_Ctx], ChaosResult]] = {
    "delete-points": _delete_points,
    "add-orphans": _add_orphans,
    "stale-points": _stale_points,
    "flip-bits": _flip_bits,
    "flip-file-bits": _flip_file_bits,
    "wrong-model": lambda ctx: _wrong_model(
        ctx, cache_as=other_model_space(ctx.space).space_id),
    "poison-cache": lambda ctx: _wrong_model(ctx, cache_as=ctx.space.space_id),
    "nan-vectors": lambda ctx: _nan_or_zero(ctx, "nan"),
    "zero-vectors": lambda ctx: _nan_or_zero(ctx, "zero"),
    "damage-payloads": _damage_payloads,
    "drift-config": _drift_config,
    "drop-collection": _drop_collection,
    "truncate-store": _truncate_store,
    "damage-cache": _damage_cache,
    "drop-cache-rows": _drop_cache_rows,
    "damage-manifest": _damage_manifest,
}
