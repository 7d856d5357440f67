"""Counting Redis round trips on the client side.

A round trip is one ``send_packed_command`` call on a redis-py connection: a single command sends one, and a
whole pipeline (however many commands it holds) is packed and sent by one call too, then its replies are read.
Commands are counted as well (``send_command`` is one, a pipeline adds its length), so the report can show both.
Connection setup (HELLO/CLIENT SETINFO) also goes through ``send_packed_command``; the harness warms the pools
before it measures, so a measured sweep pays none of it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.round_trips = 0
        self.commands = 0

    def add(self, round_trips: int = 0, commands: int = 0) -> None:
        with self._lock:
            self.round_trips += round_trips
            self.commands += commands

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.round_trips, self.commands


class CountingConnection(redis.Connection):
    """A ``redis.Connection`` that counts what it sends; subclasses pick their own counter."""

    counter: ClassVar[_Counter] = _Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).counter.add(round_trips=1)
        super().send_packed_command(command, check_health)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        type(self).counter.add(commands=1)
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        type(self).counter.add(commands=len(commands))
        return super().pack_commands(commands)


class StoreConnection(CountingConnection):
    """The store's own traffic (observations, marks, pending keys, events, the lock, the summary)."""

    counter: ClassVar[_Counter] = _Counter()


class BrokerConnection(CountingConnection):
    """kombu's traffic when the sweep enqueues a delete task (the message and Celery's task-sent event)."""

    counter: ClassVar[_Counter] = _Counter()


def counted_redis(url: str) -> redis.Redis:
    """A client like ``Store.from_settings`` makes, over a pool of :class:`StoreConnection`."""
    pool = redis.ConnectionPool.from_url(
        url,
        connection_class=StoreConnection,
        decode_responses=True,
        socket_timeout=30,
        socket_connect_timeout=10,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def count_broker_traffic() -> None:
    """Make kombu's Redis transport (in this process only) use :class:`BrokerConnection`."""
    from kombu.transport import redis as kombu_redis

    kombu_redis.Channel.connection_class = BrokerConnection
