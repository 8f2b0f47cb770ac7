"""A chat or completion request sent upstream, and once more without the
fields the upstream refused (shared/upstream-dialects.md, "Request fields
that servers reject").

The refused fields are read from the server's error (repair/request.py keeps
the table of its shapes, and hears only what the server says, not what it
echoes of the request). Once the request without them is accepted, they are
remembered for the route for the process's life, so later requests leave
them out from the start, and logged once: what one client's request could
not prove stays that request's. A refusal that names no field the request
had is the upstream's answer, passed on as it came.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from sse_adapter.proxy.upstream import ERROR_BODY_LIMIT, Upstream, UpstreamRequest, read_at_most
from sse_adapter.repair.request import Outgoing, rejected_fields

__all__ = ["Exchange", "Refused", "open_accepted"]

log = logging.getLogger(__name__)


# Fields remembered per route. A server refuses few fields, but a client can
# make up any number of names it refuses: past this many, a refusal holds for
# its own request only (sent again without the field), and takes no memory
# and no log line.
_MOST_REMEMBERED = 64


class Refused:
    """The fields each route (a decoded path: ``UpstreamRequest.route``) has
    refused, for the process's life."""

    def __init__(self) -> None:
        self._by_route: dict[str, set[str]] = {}

    def of(self, route: str) -> frozenset[str]:
        return frozenset(self._by_route.get(route, ()))

    def add(self, route: str, names: frozenset[str]) -> None:
        if not names:
            return
        known = self._by_route.setdefault(route, set())
        new = set(sorted(names - known)[: max(_MOST_REMEMBERED - len(known), 0)])
        if new:
            known.update(new)
            log.warning(
                "the upstream refused the request field(s) %s on %s: sent without them from now on",
                ", ".join(sorted(new)),
                route,
            )


@dataclass(frozen=True, slots=True)
class Exchange:
    """One chat or completion request to the upstream, as prepared for it."""

    upstream: Upstream
    request: UpstreamRequest  # its body is outgoing.body
    outgoing: Outgoing
    refused: Refused

    @property
    def url(self) -> str:
        return self.upstream.url(self.request)

    async def open(
        self, repairs: Counter[str], may_resend: Callable[[], bool] = lambda: True
    ) -> httpx.Response:
        return await open_accepted(
            self.upstream, self.request, self.outgoing, self.refused, repairs, may_resend=may_resend
        )


async def open_accepted(
    upstream: Upstream,
    request: UpstreamRequest,
    outgoing: Outgoing,
    refused: Refused,
    repairs: Counter[str],
    *,
    may_resend: Callable[[], bool] = lambda: True,
) -> httpx.Response:
    """The upstream's response to the request, sent a second time without the
    fields its first answer refused, while ``may_resend()`` (nothing sent to
    the client yet). The refusal is kept for later requests only when the
    second answer is a success: then the server has shown it."""
    response = await upstream.open(request)  # its body is outgoing.body
    if response.status_code not in (400, 422, 500):
        return response
    body = await read_at_most(response, upstream.url(request), ERROR_BODY_LIMIT)
    rejection = rejected_fields(response.status_code, body, outgoing.body)
    if not rejection.drop or not may_resend():
        return _replayed(response, body)
    retry = outgoing.without(rejection.drop)
    repairs.update(retry.repairs - outgoing.repairs)
    response = await upstream.open(request.with_body(retry.body))
    if response.is_success:
        refused.add(request.route, rejection.learn)
    return response


def _replayed(response: httpx.Response, body: bytes) -> httpx.Response:
    """The response again, its body already read (and decoded)."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)
