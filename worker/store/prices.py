"""The Store's cache of the API's hardware price list (``P:prices:<api>``) and the lock of its one fetch."""

from __future__ import annotations

import uuid
from typing import cast

from worker.models import PriceList
from worker.store.base import StorePart


class PriceKeeping(StorePart):
    """The price list as last fetched (or its failure), kept with an expiry: fetched at most once per expiry."""

    def price_list(self, api: str) -> PriceList | None:
        """The cached list of ``api`` (a client's label), or None when there is none (or it cannot be read)."""
        raw = cast(str | None, self.redis.get(self.key("prices", api)))
        return None if raw is None else PriceList.decode(raw)

    def save_price_list(self, api: str, prices: PriceList, ttl_s: float) -> None:
        """Keep ``prices`` for ``ttl_s`` (a failure only for a short backoff, so the next need asks again)."""
        self.redis.set(self.key("prices", api), prices.to_json(), px=max(1, int(ttl_s * 1000)))

    def take_price_fetch(self, api: str, ttl_s: float) -> bool:
        """Whether this caller is the one to fetch the list now (``P:prices:<api>:fetch``, SET NX with an expiry):
        many deletes at once make one request, the others wait for its result."""
        token = uuid.uuid4().hex
        return bool(self.redis.set(self.key("prices", api, "fetch"), token, nx=True, px=max(1, int(ttl_s * 1000))))
