"""What every part of the Store uses, as :class:`worker.store.Store` sets it up (declared for the type checker)."""

from __future__ import annotations

from typing import Protocol

import redis
from redis.client import Pipeline


class KeyBuilder(Protocol):
    def __call__(self, *parts: str) -> str: ...


class PipelineMaker(Protocol):
    def __call__(self) -> Pipeline: ...


class StorePart:
    """A part of the Store (a mixin of :class:`worker.store.Store`): it uses these, and only Store sets them."""

    redis: redis.Redis
    prefix: str
    retention_s: int
    events_max_len: int
    key: KeyBuilder  # ``P:<part>:<part>...``: the only way a Redis key is built
    _pipeline: PipelineMaker  # a non-transactional pipeline: its commands go in one round trip
