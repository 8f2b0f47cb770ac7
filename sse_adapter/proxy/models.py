"""``GET /v1/models`` with the config file's model aliases beside the upstream's own
models: One-API's "fetch models" button lists what it reads there."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import orjson
from fastapi import Response

from sse_adapter.proxy.upstream import map_errors
from sse_adapter.repair.dialects import json_or_none
from sse_adapter.repair.request import ModelAlias

__all__ = ["listed_with_aliases", "with_aliases"]

_LIMIT = 4 * 1024 * 1024


async def with_aliases(response: httpx.Response, aliases: Mapping[str, ModelAlias]) -> Response:
    """The upstream's model list and the aliases; any other answer as it came."""
    try:
        with map_errors(str(response.request.url)):
            body = await response.aread()
    finally:
        await response.aclose()
    content_type = response.headers.get("content-type", "application/json")
    listed = listed_with_aliases(body, aliases) if response.is_success else None
    if listed is None:
        return Response(body, status_code=response.status_code, media_type=content_type)
    return Response(listed, media_type="application/json")


def listed_with_aliases(body: bytes, aliases: Mapping[str, ModelAlias]) -> bytes | None:
    """An OpenAI model list with an entry per alias it lacks; None for a body of another shape."""
    if len(body) > _LIMIT:
        return None
    listing = json_or_none(body)
    models = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(models, list):
        return None
    known = {model.get("id") for model in models if isinstance(model, dict)}
    created = next((model.get("created") for model in models if isinstance(model, dict)), 0)
    for alias in aliases.values():
        if alias.name not in known:
            models.append(
                {
                    "id": alias.name,
                    "object": "model",
                    "created": created if isinstance(created, int) else 0,
                    "owned_by": "sse-adapter",
                    "root": alias.upstream_model or alias.name,
                }
            )
    return orjson.dumps(listing)
