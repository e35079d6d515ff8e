"""The API's OpenAPI description, generated from :func:`gateway.api.create_app`.

``edgeproof-gateway openapi --out docs/openapi.json`` refreshes the copy kept in the repo;
a test fails when that copy differs from what the code serves at ``/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any, cast

from gateway.api import create_app
from gateway.api_context import ApiContext
from gateway.metrics import GatewayMetrics
from gateway.store import LogStore
from protocol.keys import Secret


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document of the API (no store or network needed)."""
    context = ApiContext(store=cast(LogStore, None), metrics=GatewayMetrics(), verifier_key="",
                         admin_token=Secret(b""), wall_ms=lambda: 0, health=dict)
    return create_app(context).openapi()


def openapi_text() -> str:
    """Return the OpenAPI document as stable, diff-friendly JSON text."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
