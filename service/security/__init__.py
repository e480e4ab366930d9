"""API keys, rate limits and the request-size limit."""

from service.security.keys import (
    ANONYMOUS,
    SCOPES,
    ApiKey,
    Principal,
    create_key,
    key_store,
    revoke_key,
    verify_key,
)
from service.security.ratelimit import RateLimiter

__all__ = [
    "ANONYMOUS",
    "SCOPES",
    "ApiKey",
    "Principal",
    "RateLimiter",
    "create_key",
    "key_store",
    "revoke_key",
    "verify_key",
]
