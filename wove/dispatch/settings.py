"""The ``executor_config`` keys every backend-adapter environment shares, validated with the valid names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ..errors import InvalidValueError
from . import protocol

if TYPE_CHECKING:
    from ..executors.adapter import BackendAdapter

#: ``executor_config`` keys every adapter environment understands.
DISPATCH_KEYS = frozenset({
    "callback_host", "callback_port", "callback_token", "callback_url", "callback_max_body",
    "spool_dir", "spool_threshold", "result_channel", "post_timeout", "unpickle_allow", "orphan_grace",
    "orphan_timeout",
})
RESULT_CHANNELS = ("http", "filesystem")


def token_from_url(url: Optional[str]) -> Optional[str]:
    if not url:
        return None
    marker = "/wove/events/"
    if marker in url:
        token = url.split(marker, 1)[1].strip("/")
        return token or None
    return None


def validate_dispatch_config(config: dict[str, Any], *, environment: str,
                             adapter_class: Optional[type[BackendAdapter]] = None,
                             label: str = "backend", extra_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check the dispatch keys every adapter environment shares; unknown keys name the valid ones."""
    from .._config import unknown_key_message

    adapter_keys = adapter_class.config_keys if adapter_class is not None else frozenset()
    if adapter_keys is not None:
        valid = DISPATCH_KEYS | adapter_keys | extra_keys
        for key in config:
            if key not in valid:
                raise InvalidValueError(unknown_key_message(
                    f"executor_config key for environment {environment!r} ({label}):", key, valid))
    where = f"environment {environment!r}: executor_config"
    channel = config.get("result_channel", "http")
    if channel not in RESULT_CHANNELS:
        raise InvalidValueError(f"{where}.result_channel must be one of {', '.join(map(repr, RESULT_CHANNELS))}; "
                         f"got {channel!r}")
    port = config.get("callback_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise InvalidValueError(f"{where}.callback_port must be an integer port 0-65535 (0 = any free port); "
                         f"got {port!r}")
    allow = config.get("unpickle_allow")
    if allow is not None and (isinstance(allow, str) or not all(
            isinstance(m, str) and m and all(part.isidentifier() for part in m.split(".")) for m in allow)):
        raise InvalidValueError(
            f"{where}.unpickle_allow must be a list of module names whose classes results may contain "
            f"(e.g. ['numpy', 'pandas', 'mypackage']); got {allow!r}")
    for key in ("callback_host", "callback_token", "callback_url", "spool_dir"):
        value = config.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidValueError(f"{where}.{key} must be a non-empty string, got {value!r}")
    url = config.get("callback_url")
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise InvalidValueError(f"{where}.callback_url must start with http:// or https://, "
                             f"got {protocol.redact(url)!r}")
        token = config.get("callback_token")
        url_token = token_from_url(url)
        if url_token is None:
            raise InvalidValueError(f"{where}.callback_url must end with /wove/events/<token> (the path workers "
                             f"post to), got {url!r}")
        if token is not None and token != url_token:   # neither token is shown: they are secrets
            raise InvalidValueError(f"{where}: callback_token does not match the token in callback_url "
                             f"({protocol.redact(url)!r}); they must be the same")
    for key, minimum in (("callback_max_body", 1024), ("spool_threshold", 1), ("post_timeout", 1)):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < minimum):
            raise InvalidValueError(f"{where}.{key} must be a number >= {minimum}, got {value!r}")
    for key in ("orphan_grace", "orphan_timeout"):   # seconds; None: jobs never stop for a missing driver
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 10):
            raise InvalidValueError(f"{where}.{key} must be a number of seconds >= 10 (how long a job waits for "
                                    f"a weave that stopped renewing its lease), or None; got {value!r}")
    return config
