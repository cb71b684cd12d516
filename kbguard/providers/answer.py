"""Checking an embeddings answer before anything of it is used.

An answer is accepted only whole: one finite, non-zero vector of the expected size per text, each
text's vector found by its ``index`` (an answer in shuffled order is fine when every index is
there exactly once). Anything else raises ``InvalidAnswer`` (or ``ProviderUnavailable`` for an
``error`` object sent with HTTP 200, as some gateways report rate limits).

An answer is also no bigger than its batch can need (``answer_cap``): the bytes of every vector
written as JSON numbers, the longer of the two encodings an endpoint may use, with room to
spare. Reading stops there, so a runaway or hostile answer costs the cap, never the process.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from kbguard.errors import InvalidAnswer, ProviderUnavailable

_NEXT = "Nothing of this answer is used; the chain fails over to its next provider."
#: the most bytes one number of a vector may take: JSON text with room for 17 significant
#: digits, an exponent and whitespace (base64 takes 16/3 bytes a float32)
BYTES_PER_NUMBER = 48
#: around each vector: ``{"object": "embedding", "index": 2047, "embedding": ...}``
BYTES_PER_VECTOR = 256
#: around the list: ``usage``, the model's name, and whatever else an endpoint adds
ANSWER_ALLOWANCE = 64 * 1024


def answer_cap(texts: int, dim: int) -> int:
    """The most bytes (after inflating) an answer for ``texts`` texts of ``dim`` dimensions is
    allowed to be."""
    return texts * (dim * BYTES_PER_NUMBER + BYTES_PER_VECTOR) + ANSWER_ALLOWANCE


def oversized(provider: str, cap: int, texts: int, dim: int, why: str) -> InvalidAnswer:
    return InvalidAnswer(f"{provider} answered with {why} for {texts} texts of {dim} "
                         f"dimensions, past the {cap:,} such an answer can need; reading stopped "
                         f"there. {_NEXT}")


def unreadable(provider: str, why: str) -> InvalidAnswer:
    return InvalidAnswer(f"{provider} answered with {why}. {_NEXT}")


def decode_answer(body: bytes, expected: int, dim: int, provider: str,
                  scrub: Callable[[str], str] = str) -> tuple[np.ndarray, int | None]:
    """The vectors of an OpenAI embeddings answer, shape (expected, dim), float32, in input
    order, and ``usage.prompt_tokens`` when the answer carries it. ``scrub`` cleans text the
    server sent before it goes into a message."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidAnswer(f"{provider} answered with malformed JSON ({exc.__class__.__name__} "
                            f"at {len(body)} bytes). {_NEXT}") from None
    if not isinstance(answer, dict):
        raise InvalidAnswer(f"{provider} answered with JSON that is not an object. {_NEXT}")
    if answer.get("error") is not None:
        raise ProviderUnavailable(f"{provider} answered HTTP 200 with an error: "
                                  f"{_error_text(answer['error'], scrub)}. {_NEXT}")
    data = answer.get("data")
    if not isinstance(data, list):
        raise InvalidAnswer(f"{provider} answered without a `data` list. {_NEXT}")
    if len(data) != expected:
        raise InvalidAnswer(f"{provider} answered with {len(data)} vectors for {expected} texts. "
                            f"{_NEXT}")
    rows: list[np.ndarray | None] = [None] * expected
    for pos, item in enumerate(data):
        if not isinstance(item, dict):
            raise InvalidAnswer(f"{provider} answered with item {pos} that is not an object. "
                                f"{_NEXT}")
        index = item.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected:
            raise InvalidAnswer(f"{provider} answered with index {index!r} at item {pos}, outside "
                                f"0..{expected - 1}. {_NEXT}")
        if rows[index] is not None:
            missing = [i for i in range(expected) if rows[i] is None and
                       all(not isinstance(d, dict) or d.get("index") != i for d in data)]
            raise InvalidAnswer(f"{provider} answered with index {index} twice"
                                f"{f' and without index {missing[0]}' if missing else ''}. "
                                f"{_NEXT}")
        vec = _vector(item.get("embedding"), provider, index)
        if vec.shape[0] != dim:
            raise InvalidAnswer(f"{provider} answered with a {vec.shape[0]}-d vector (text "
                                f"{index}); the space is {dim}-d. Check the provider's model "
                                f"(and `dim` of the space). {_NEXT}")
        rows[index] = vec
    vectors = np.stack(rows) if expected else np.zeros((0, dim), dtype=np.float32)  # type: ignore[arg-type]
    check_vectors(vectors, expected, dim, provider)
    return vectors, _prompt_tokens(answer.get("usage"))


def check_vectors(vectors: np.ndarray, expected: int, dim: int, provider: str) -> np.ndarray:
    """Raise ``InvalidAnswer`` unless ``vectors`` is (expected, dim), finite and has no zero row."""
    if vectors.ndim != 2 or vectors.shape[0] != expected:
        raise InvalidAnswer(f"{provider} made {vectors.shape[0] if vectors.ndim else 0} vectors "
                            f"for {expected} texts. {_NEXT}")
    if vectors.shape[1] != dim:
        raise InvalidAnswer(f"{provider} made {vectors.shape[1]}-d vectors; the space is {dim}-d. "
                            f"Check the provider's model (and `dim` of the space). {_NEXT}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidAnswer(f"{provider} made a vector with NaN or infinite values (text {row}). "
                            f"{_NEXT}")
    zero = ~vectors.any(axis=1)
    if zero.any():
        raise InvalidAnswer(f"{provider} made an all-zero vector (text {int(np.flatnonzero(zero)[0])}). "
                            f"{_NEXT}")
    return vectors


def _vector(raw: Any, provider: str, index: int) -> np.ndarray:
    if isinstance(raw, str):
        try:
            buf = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidAnswer(f"{provider} answered with vector {index} that is not valid "
                                f"base64. {_NEXT}") from None
        if len(buf) % 4:
            raise InvalidAnswer(f"{provider} answered with vector {index} of {len(buf)} bytes, not "
                                f"whole float32 values. {_NEXT}")
        return np.frombuffer(buf, dtype="<f4").astype(np.float32)
    if isinstance(raw, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                     for x in raw):
        return np.asarray(raw, dtype=np.float32)
    raise InvalidAnswer(f"{provider} answered with vector {index} that is neither a list of "
                        f"numbers nor base64. {_NEXT}")


def _prompt_tokens(usage: Any) -> int | None:
    if isinstance(usage, dict):
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
            return tokens
    return None


def _error_text(error: Any, scrub: Callable[[str], str]) -> str:
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("message", "type", "code") if error.get(k) is not None]
        text = " / ".join(parts) or "(no message)"
    else:
        text = str(error)
    return scrub(text)[:300]
