"""Keep credentials out of everything kbguard prints or stores.

A store URL can carry credentials: user-info (``https://user:password@host``) or an API key in
its query (``?api_key=...``). kbguard never shows such a URL as written: ``redact_url`` masks
both parts, and ``scrub`` masks them in any text that may quote a URL (a client library's
error, a run summary), together with secrets the caller knows by value (an API key read from
the environment).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

# Query parameters that carry a credential. `key` alone is only masked in a URL query, where it
# is the usual name of an API key; in prose it is an ordinary word.
SECRET_PARAMS = ("api_key", "apikey", "api-key", "key", "token", "access_token", "auth",
                 "password", "passwd", "secret", "jwt")

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#@]*(?:@[^/\s?#@]*)*@")
_PARAM = re.compile(r"(?i)([?&;](?:" + "|".join(map(re.escape, SECRET_PARAMS))
                    + r")=)([^&;#\s'\"]*)")
# Outside a query: api_key=..., "api-key: ..." (a header echoed by a proxy).
_LOOSE_KEY = re.compile(r"(?i)\b(api[_-]?key\s*[=:]\s*)[^\s&;,'\")\]}]+")
# A secret shorter than this is not replaced by value: masking every "ab" would mangle the text
# around it. Secrets inside URLs are masked by position, whatever their length.
_MIN_SECRET = 4


def redact_url(url: str) -> str:
    """``url`` with its user-info and credential query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # malformed (an unbalanced IPv6 bracket): mask by pattern only
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    shown = parts._replace(netloc=netloc).geturl()
    return _PARAM.sub(lambda m: m.group(1) + MASK, shown)


def url_secrets(url: str | None) -> list[str]:
    """The credential values inside ``url`` (password, credential query parameters), as
    written and percent-decoded: what ``scrub`` must also mask when it meets them elsewhere."""
    if not url:
        return []
    out: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        out.append(userinfo)
        out.append(userinfo.partition(":")[2])
    out.extend(m.group(2) for m in _PARAM.finditer("?" + parts.query))
    return [v for s in out for v in {s, unquote(s)} if s]


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URL credentials, API-key assignments and the given secret values masked."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _PARAM.sub(lambda m: m.group(1) + MASK, text)
    text = _LOOSE_KEY.sub(lambda m: m.group(1) + MASK, text)
    # longest first, so a secret that contains another is masked whole
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len,
                         reverse=True):
        text = text.replace(secret, MASK)
    return text


def scrub_data(value: object, secrets: Iterable[str | None] = ()) -> object:
    """``scrub`` applied to every string inside nested dicts, lists and tuples (a JSON report)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: scrub_data(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_data(v, secrets) for v in value]
    return value
