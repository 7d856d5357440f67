"""Secrets never reach a text the janitor writes: a log line, Redis, a task result, the terminal.

A secret reaches a text in pieces as often as whole: an error body cut at 200 characters leaves half an API
key, a protocol error quotes a header in a ``bytearray(b'...')``. So a :class:`Redactor` masks every contiguous
fragment of :data:`MIN_FRAGMENT` or more characters of any of its secrets, in any of the forms a secret is
written in (as it is, JSON-, repr- or percent-escaped), not only the whole secret. A secret shorter than that is
masked where it appears whole (from :data:`MIN_SECRET` characters on, unless told otherwise).

The process-wide registry (:func:`register_secret`, :func:`scrub`) knows every secret of the process, because
errors reach logs, Redis, results and the terminal from many places; :class:`ScrubFilter` applies it to log
records. Texts that are shortened are scrubbed before they are cut (:func:`scrub_line`, :func:`scrub_clip`), so
the cut cannot leave a piece that is too short to recognise.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar, cast
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    from worker.settings import Settings

# A run of this many characters of a secret is masked wherever it appears.
MIN_FRAGMENT = 8
# A secret shorter than MIN_FRAGMENT is masked only whole; one shorter than this is not masked at all (it would
# mask every "a" or "pw" of every text, and protects nothing anyway).
MIN_SECRET = 4
MASK = "***"
# The most characters of one text that :func:`scrub_line` and :func:`scrub_clip` read (a body can be 256 MiB).
MAX_SCAN = 64 * 1024

Secret = str | SecretStr | None
T = TypeVar("T")


def _plain(value: Secret) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else (value or "")


def secret_forms(secret: str) -> frozenset[str]:
    """The ways ``secret`` is written into a text: as it is, with its whitespace runs made one space, and
    escaped as JSON, a Python repr (of a str or of bytes, either quote) or percent-encoding would write it."""
    forms = {
        secret,
        " ".join(secret.split()),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        secret.replace("\\", "\\\\").replace("'", "\\'"),
        secret.replace("\\", "\\\\").replace('"', '\\"'),
        repr(secret.encode("utf-8", "replace"))[2:-1],
        quote(secret, safe=""),
        quote(secret),
    }
    return frozenset(f for f in forms if f)


class Redactor:
    """Masks every fragment of ``MIN_FRAGMENT`` or more characters of any secret (in any of its
    :func:`secret_forms`) with :data:`MASK`; overlapping or adjacent fragments become one mask.

    Linear in the text: every window of ``MIN_FRAGMENT`` characters is looked up in the set of the secrets'
    windows, and a text that holds none of the secrets' aligned 4-character pieces (every fragment holds one)
    is returned after a few substring searches without that scan.
    """

    __slots__ = ("_grams", "_quads", "_repeat", "_short")

    def __init__(self, secrets: Iterable[Secret] = (), *, min_secret: int = MIN_SECRET) -> None:
        grams: set[str] = set()
        quads: set[str] = set()
        short: set[str] = set()
        for value in secrets:
            for form in secret_forms(_plain(value)) if _plain(value) else ():
                if len(form) >= MIN_FRAGMENT:
                    grams.update(form[i : i + MIN_FRAGMENT] for i in range(len(form) - MIN_FRAGMENT + 1))
                    # Any window [a, a+8) of the form holds form[i:i+4] for the first multiple i of 4 >= a.
                    quads.update(form[i : i + 4] for i in range(0, len(form) - 3, 4))
                elif len(form) >= max(1, min_secret):
                    short.add(form)
        self._grams = frozenset(grams)
        self._quads = tuple(sorted(quads))
        self._short = tuple(sorted(short, key=len, reverse=True))
        # Masking can join text into a new fragment only if a secret holds the mask's character.
        self._repeat = any(MASK[0] in s for s in (*grams, *short))

    def __bool__(self) -> bool:
        return bool(self._grams or self._short)

    def __repr__(self) -> str:
        return f"Redactor({len(self._grams)} fragment(s), {len(self._short)} short secret(s))"

    def ranges(self, text: str) -> list[tuple[int, int]]:
        """The [start, end) ranges of ``text`` that :meth:`scrub` masks, merged, in order."""
        found: list[tuple[int, int]] = []
        grams = self._grams
        if grams and any(q in text for q in self._quads):
            k = MIN_FRAGMENT
            start = end = -1
            for i in range(len(text) - k + 1):
                if text[i : i + k] in grams:
                    if i > end:
                        if end >= 0:
                            found.append((start, end))
                        start = i
                    end = i + k
            if end >= 0:
                found.append((start, end))
        for secret in self._short:
            at = text.find(secret)
            while at >= 0:
                found.append((at, at + len(secret)))
                at = text.find(secret, at + 1)
        if len(found) < 2:
            return found
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def _once(self, text: str) -> str:
        ranges = self.ranges(text)
        if not ranges:
            return text
        pieces = []
        at = 0
        for start, end in ranges:
            pieces.append(text[at:start])
            pieces.append(MASK)
            at = end
        pieces.append(text[at:])
        return "".join(pieces)

    def scrub(self, text: str) -> str:
        """``text`` with every fragment masked."""
        if not self:
            return text
        out = self._once(text)
        # Again while a pass shortened the text (a mask can complete a secret that holds "*"): this ends.
        while self._repeat and len(out) < len(text):
            text, out = out, self._once(out)
        return out


# ---------------------------------------------------------------------------------------------- the registry

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_registry = Redactor()
_api_keys: frozenset[str] = frozenset()
_api_key_registry = Redactor()


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def register_secret(*values: Secret) -> None:
    """Make :func:`scrub` (and so :class:`ScrubFilter`) mask these secrets in this process from now on.
    ``None`` and empty values are ignored; registering a secret again costs a set lookup."""
    global _secrets, _registry
    new = {_plain(v) for v in values} - {""}
    if new <= _secrets:
        return
    with _lock:
        _secrets = _secrets | new
        _registry = Redactor(_secrets)


def register_api_key(key: Secret) -> None:
    """Register the Together API key as a secret, and as the one :func:`scrub_api_key` masks."""
    global _api_keys, _api_key_registry
    plain = _plain(key)
    register_secret(plain)
    if not plain or plain in _api_keys:
        return
    with _lock:
        _api_keys = _api_keys | {plain}
        # Masked whole whatever its length (a test key can be one letter); fragments from 8 characters on.
        _api_key_registry = Redactor(_api_keys, min_secret=1)


def scrub_api_key(text: str) -> str:
    """``text`` from the API (an endpoint's name, a project's slug) with every fragment of the API key masked,
    before the janitor writes it where names are kept as they are (a task's arguments, a claim, the webhook).
    Only of the API key: a long random token that no real name holds a piece of by chance. The other secrets
    are not masked here: a short one (a word of a webhook path) would mangle real names (``ml-services``)."""
    return _api_key_registry.scrub(text) if _api_key_registry else text


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets, _registry, _api_keys, _api_key_registry
    with _lock:
        _secrets = frozenset()
        _registry = Redactor()
        _api_keys = frozenset()
        _api_key_registry = Redactor()


def registered() -> Redactor:
    """The redactor of every registered secret (falsy when none is)."""
    return _registry


def scrub(text: str, *extra: Redactor) -> str:
    """``text`` with every fragment of every registered secret, and of ``extra``'s secrets, masked."""
    for redactor in (_registry, *extra):
        if redactor:
            text = redactor.scrub(text)
    return text


def scrub_fields(value: T) -> T:
    """``value`` with every string in it scrubbed: a str, or dicts, lists and tuples of them (keys too), as a
    record is before it is serialised (never scrub the JSON text itself: a mask could swallow an escape)."""
    if not _registry:
        return value
    return cast(T, _scrub_fields(value))


def scrub_api_key_fields(value: T) -> T:
    """:func:`scrub_fields` with :func:`scrub_api_key`: for a record of names from the API as they are."""
    if not _api_key_registry:
        return value
    return cast(T, _scrub_fields(value, scrub_api_key))


def _scrub_fields(value: object, scrubbed: Callable[[str], str] = scrub) -> object:
    if isinstance(value, str):
        return scrubbed(value)
    if isinstance(value, Mapping):
        return {_scrub_fields(k, scrubbed): _scrub_fields(v, scrubbed) for k, v in value.items()}
    if type(value) is list:
        return [_scrub_fields(v, scrubbed) for v in value]
    if type(value) is tuple:  # not a named tuple: it is left as it is
        return tuple(_scrub_fields(v, scrubbed) for v in value)
    return value


def scrub_clip(text: str, limit: int, *extra: Redactor) -> str:
    """``text`` scrubbed, then cut to at most ``limit`` characters (ending in ``...``), then scrubbed again.

    Scrubbing first means the cut cannot leave a piece of a secret too short to be recognised; only the first
    :data:`MAX_SCAN` characters are read.
    """
    return _clip(text, limit, extra, flatten=False)


def scrub_line(text: str, limit: int = 200, *extra: Redactor) -> str:
    """As :func:`scrub_clip`, with every run of whitespace (line breaks too) made one space first: one line."""
    return _clip(text, limit, extra, flatten=True)


def _clip(text: str, limit: int, extra: tuple[Redactor, ...], *, flatten: bool) -> str:
    cut = len(text) > MAX_SCAN
    if cut:
        text = text[:MAX_SCAN]
    if flatten:
        text = " ".join(text.split())
    out = scrub(text, *extra)
    if cut or len(out) > limit:
        keep = len(out) if len(out) + 3 <= limit else max(0, limit - 3)
        # Scrubbed again: the "..." could complete a fragment of a secret that holds dots.
        out = scrub(out[:keep] + "...", *extra)
    return out


# A query key holding one of these (any case) carries a secret; as worker.settings.redact_url reads a Redis URL.


def url_secrets(url: str) -> list[str]:
    """What in a webhook URL is a credential: its password, its path and its query (a webhook's token is in
    one of them). The scheme and host are not secrets: masking them would mask every URL of every text. (A
    Redis URL's credentials are :func:`worker.settings.redis_url_secrets`.)"""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return [url]  # not a URL that can be taken apart: the whole of it is the secret
    found = [password, unquote(password)] if password else []
    if parts.path not in ("", "/"):
        found += [parts.path, unquote(parts.path)]
    if parts.query:
        found += [parts.query, unquote(parts.query)]
    return [s for s in found if s]


def register_settings_secrets(settings: Settings) -> None:
    """Register the secrets of ``settings``: the API key, the webhook URL's credential, the Redis password."""
    from worker.settings import redis_url_secrets  # settings imports this module

    register_api_key(settings.together_api_key)
    if settings.notify_webhook_url is not None:
        register_secret(*url_secrets(settings.notify_webhook_url.get_secret_value()))
    register_secret(*redis_url_secrets(settings.redis_url))


# ---------------------------------------------------------------------------------------------- logging


class ScrubFilter(logging.Filter):
    """Scrub a log record as a handler would write it: the formatted message (``msg % args``), the
    exception's traceback and the stack. Put it on a handler before any filter or formatter that reads them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # the formatter would fail and print msg and args unscrubbed; show them scrubbed
            record.msg, record.args = scrub(f"{record.msg} (arguments that do not fit: {record.args!r})"), None
        else:
            scrubbed = scrub(message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def scrub_handler(handler: logging.Handler) -> None:
    """Put a :class:`ScrubFilter` first on ``handler`` (once)."""
    if not any(isinstance(f, ScrubFilter) for f in handler.filters):
        handler.filters.insert(0, ScrubFilter())


def scrub_handlers(logger: logging.Logger) -> None:
    """Put a :class:`ScrubFilter` first on every handler of ``logger`` (once)."""
    for handler in logger.handlers:
        scrub_handler(handler)
