"""What must never reach a model card, a log or the Hub: secret-named keys and token-shaped strings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from huggingface_hub import get_token

SECRET_KEY_PARTS = ("token", "secret", "password", "key")
HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{10,}")
REDACTED = "<redacted>"


def redact_secrets(text: str, token: str | None) -> str:
    """Remove the token in use (passed or stored) and anything shaped like a Hub token from `text`."""
    for secret in {token, get_token()}:
        if secret:
            text = text.replace(secret, REDACTED)
    return HF_TOKEN_PATTERN.sub(REDACTED, text)


def chain_has_secret(err: BaseException, token: str | None) -> bool:
    """Whether `err` or an exception it was raised from/during mentions a token."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{current!r} {current}"
        if redact_secrets(text, token) != text:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_secret_key(key: object) -> bool:
    name = str(key).lower()
    return any(part in name for part in SECRET_KEY_PARTS)


def scrub(value: Any) -> Any:
    """Drop secret-named keys and redact token-shaped strings, at any nesting depth."""
    if isinstance(value, Mapping):
        return {key: scrub(item) for key, item in value.items() if not is_secret_key(key)}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return HF_TOKEN_PATTERN.sub(REDACTED, value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    # Paths, enums, dtypes...: their text is what the card shows, so that is what gets checked.
    return HF_TOKEN_PATTERN.sub(REDACTED, str(value))
