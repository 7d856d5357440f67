"""Every exception the janitor raises on purpose, in one place (as httpx keeps its own)."""

from __future__ import annotations


class JanitorError(Exception):
    """Base of the janitor's own errors; ``str()`` is one line fit for a person."""


class SettingsError(JanitorError):
    """A setting is missing or malformed; the process must not start."""


class PolicyError(JanitorError):
    """The policy file is unreadable or invalid; nothing may be deleted on its strength."""


class TogetherError(JanitorError):
    """Talking to the Together API did not give a usable answer."""


class InvalidEndpointId(TogetherError):
    """An endpoint id that is not exactly one safe URL path segment; it is never put into a URL."""


class ApiTransportError(TogetherError):
    """No HTTP answer at all: timeout, refused or dropped connection."""


class MalformedResponse(TogetherError):
    """An HTTP answer whose body is not what the API contract promises."""


class ApiStatusError(TogetherError):
    """The API answered with a status the caller did not expect."""

    def __init__(self, status_code: int, message: str, error_type: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.api_message = message
        self.error_type = error_type


class ApiRefusal(ApiStatusError):
    """A 400 or 409 to a step of the v2 delete sequence: the API says no (deployments left, a traffic split,
    a stale etag). The sequence ends as ``blocked`` with the API's message; it is never retried blindly."""


class SequenceRefused(TogetherError):
    """The janitor itself will not take the next step (deployments it cannot see, no etag): ``blocked``."""


class ApiUnsupported(TogetherError):
    """The configured API version cannot do this (request analytics in v1)."""


class SequenceContinues(JanitorError):
    """Not a failure: a v2 delete took a step and its task runs again for the next (Flower shows a retry)."""


class RetryableApiError(TogetherError):
    """A 500 from the API: the one answer a delete task retries (Flower shows it as the retry's reason)."""
