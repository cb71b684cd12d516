"""Conversions shared by the store adapters: point ids, vectors and collection specs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from kbguard.errors import StoreError
from kbguard.store.base import DISTANCES, VectorSpec

# The form str(uuid.UUID(...)) gives; ids kbguard generates are already in it, and recognising
# them here costs a tenth of a parse-and-format round trip.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CANONICAL_UUID_LINES = re.compile(f"(?:{_CANONICAL_UUID.pattern}\n)*")


def canonical_id(point_id: Any) -> str:
    """The lowercase hyphenated form of a UUID point id; StoreError if it is not a UUID."""
    if isinstance(point_id, uuid.UUID):
        return str(point_id)
    if isinstance(point_id, str) and _CANONICAL_UUID.fullmatch(point_id):
        return point_id
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise StoreError(
            f"Point id {point_id!r} is not a UUID; kbguard stores only UUID point ids."
        ) from None


def canonical_ids(point_ids: Sequence[Any]) -> list[str]:
    """``canonical_id`` of each id; a list already canonical is checked by one regex match."""
    if all(isinstance(i, str) for i in point_ids):
        lines = "\n".join(point_ids) + "\n"
        # the length rules out an id with a newline inside passing as two
        if len(lines) == 37 * len(point_ids) and _CANONICAL_UUID_LINES.fullmatch(lines):
            return list(point_ids)
    return [canonical_id(i) for i in point_ids]


def id_from_store(point_id: Any) -> str:
    """A point id as read back from a store, in canonical string form."""
    # A store written by another tool may hold integer ids; they are reported as-is so that
    # `verify` can flag them as orphans instead of failing to read the store.
    if isinstance(point_id, int):
        return str(point_id)
    return canonical_id(point_id)


def vector_out(values: Any) -> np.ndarray:
    """A stored vector as float32; exact, because the stores keep float32 internally."""
    return np.asarray(values, dtype=np.float32)


def vector_in(values: np.ndarray) -> list[float]:
    """A vector as the list of floats the Qdrant bindings take, rounded to float32 first."""
    # Rounding here rather than in the engine keeps what is written identical to what a caller
    # hashing the float32 array expects to read back.
    return np.asarray(values, dtype=np.float32).ravel().tolist()


def vector_buffer(values: np.ndarray) -> memoryview:
    """A vector as a float32 buffer. The Edge bindings read a buffer ~2.5x faster than a list
    of Python floats (a list costs one object per float), and bit-exactly."""
    return memoryview(np.ascontiguousarray(values, dtype=np.float32).ravel())  # type: ignore[arg-type]


def check_specs(vectors: Sequence[VectorSpec]) -> dict[str, VectorSpec]:
    """The specs by name, after checking they describe a collection a store can create."""
    if not vectors:
        raise StoreError("A collection needs at least one named vector; the config lists none.")
    specs: dict[str, VectorSpec] = {}
    for spec in vectors:
        if spec.name in specs:
            raise StoreError(f"The vector name {spec.name!r} is listed twice in the config.")
        if spec.distance not in DISTANCES:
            raise StoreError(
                f"Vector {spec.name!r} asks for distance {spec.distance!r}; "
                f"use one of {', '.join(DISTANCES)}."
            )
        if spec.dim <= 0:
            raise StoreError(f"Vector {spec.name!r} has dimension {spec.dim}; it must be positive.")
        specs[spec.name] = spec
    return specs


def same_config(have: Sequence[VectorSpec], want: dict[str, VectorSpec]) -> bool:
    return {v.name: v for v in have} == want


def config_mismatch(
    backend: str, where: str, have: Sequence[VectorSpec], want: dict[str, VectorSpec]
) -> StoreError:
    """The error for a create() that finds the collection already there with other vectors."""

    def fmt(specs: Sequence[VectorSpec]) -> str:
        ordered = sorted(specs, key=lambda s: s.name)
        return ", ".join(f"{s.name}({s.dim}-d {s.distance})" for s in ordered) or "none"

    return StoreError(
        f"The {backend} collection at {where} already exists with vectors {fmt(have)}, not "
        f"{fmt(list(want.values()))}. Run `kbguard rebuild --full` to recreate it."
    )


def engine_message(exc: BaseException) -> str:
    """The engine's own words for an error, without the bindings' generic prefix."""
    text = str(exc).strip() or type(exc).__name__
    for prefix in ("Service runtime error: ",):
        while text.startswith(prefix):
            text = text[len(prefix):]
    return text if len(text) <= 400 else text[:397] + "..."
