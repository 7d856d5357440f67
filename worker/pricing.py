"""What a delete or stop took off the hourly bill: running replicas times the price of one.

The price of one replica of a hardware type is the policy's ``prices:`` entry when it names the hardware (a
negotiated rate), else the API's own catalog (:meth:`EndpointsApi.price_list`), fetched at most once an hour and
kept in Redis (``P:prices:<api>``). A price that is not known is None, never 0: the report, the exporter and the
webhook then say "unknown". A failed fetch is kept for :data:`RETRY_AFTER_S`, so deletes meanwhile do not ask
again; the next one after that does.

Matching a deployment's hardware to the catalog follows Together's CLI (``find_instance_type``): the entry's
name, then its id, then its name without ``nvidia-`` (case-insensitive). The SDK does not say which catalog
field a deployment's ``hardware`` equals (docs/api-v2.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from worker.clock import utc_now
from worker.errors import TogetherError
from worker.models import PriceList
from worker.redact import scrub_line
from worker.together import EndpointsApi, HardwarePrice

if TYPE_CHECKING:
    from worker.store import Store

log = logging.getLogger(__name__)

PRICE_TTL_S = 3600.0  # a price list is fetched at most once per this
RETRY_AFTER_S = 60.0  # a failed fetch: prices unknown, and not asked again, for this long
_POLL_S = 0.05  # while another delete fetches the list

Billable = tuple[tuple[str | None, int], ...]


def find_price(catalog: Sequence[HardwarePrice], hardware: str) -> float | None:
    """The catalog's price for ``hardware`` as Together's CLI matches it: name or id exactly (name first, in
    catalog order), then the name without ``nvidia-``, case-insensitively; None when nothing matches."""
    for entry in catalog:
        if entry.name == hardware or entry.id == hardware:
            return entry.usd_per_hour
    wanted = hardware.lower().replace("nvidia-", "")
    for entry in catalog:
        if entry.name.lower().replace("nvidia-", "") == wanted:
            return entry.usd_per_hour
    return None


def endpoint_price(billable: Billable | None, price_of: Callable[[str], float | None]) -> float | None:
    """USD per hour of what runs: each deployment's running replicas times the price of one of its hardware.

    None when the replica counts are not known, or a deployment with running replicas has no hardware or no
    price; nothing running costs 0 (a stopped endpoint removes no spend).
    """
    if billable is None:
        return None
    total = 0.0
    for hardware, replicas in billable:
        if replicas == 0:
            continue
        price = price_of(hardware) if hardware else None
        if price is None or replicas < 0:
            return None
        total += price * replicas
    return total


class Pricing:
    """The price of an endpoint for one delete: the policy's override, else the cached (or fetched) catalog.

    ``deadline`` (monotonic) bounds the fetch and the wait for another delete's fetch, so pricing never takes
    the task past its time limit: without the time for one more request, the price is unknown (and nothing is
    recorded, so the next delete fetches).
    """

    def __init__(
        self,
        store: Store,
        client: EndpointsApi,
        *,
        request_s: float,
        deadline: float,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store, self.client = store, client
        self.request_s, self.deadline = request_s, deadline
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self._catalog: tuple[HardwarePrice, ...] | None = None
        self._asked = False

    def price(self, billable: Billable | None, overrides: Callable[[str], float | None]) -> float | None:
        """USD per hour removed by deleting (or stopping) what ``billable`` says runs."""

        def price_of(hardware: str) -> float | None:
            override = overrides(hardware)
            if override is not None:
                return override
            return find_price(self.catalog() or (), hardware)

        return endpoint_price(billable, price_of)

    def catalog(self) -> tuple[HardwarePrice, ...] | None:
        """The API's price list: asked once per instance, from Redis, else fetched (by one delete at a time)."""
        if not self._asked:
            self._asked = True
            self._catalog = self._cached_or_fetched()
        return self._catalog

    def _cached_or_fetched(self) -> tuple[HardwarePrice, ...] | None:
        api = self.client.version  # the label the cache is kept under
        while True:
            cached = self.store.price_list(api)
            if cached is not None:
                return cached.prices
            # One request takes up to about three HTTP timeouts (connect, first byte, body).
            budget = self.deadline - self.monotonic()
            if budget < 3 * self.request_s:
                return None
            if self.store.take_price_fetch(api, 3 * self.request_s + 1):
                return self._fetch(api)
            self.sleep(_POLL_S)  # another delete is fetching it: its result is in Redis within its budget

    def _fetch(self, api: str) -> tuple[HardwarePrice, ...] | None:
        try:
            prices: tuple[HardwarePrice, ...] | None = tuple(self.client.price_list())
            error = None
        except TogetherError as exc:
            prices, error = None, scrub_line(str(exc), 200)
            log.warning("price list (%s): %s; prices unknown for %gs", api, error, RETRY_AFTER_S)
        self.store.save_price_list(
            api, PriceList(self.clock(), prices, error), PRICE_TTL_S if prices is not None else RETRY_AFTER_S
        )
        return prices
