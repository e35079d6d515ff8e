"""The gateway's admin HTTP API as provisioning uses it (docs/ARCHITECTURE.md, the table).

Only ``requests`` is used, with a time-out on every call; no requests exception leaves this
module. An unreachable gateway is a :class:`TransportError`; a refusal (bad token, duplicate
name or key, unknown device) is a :class:`RejectedByPeer` carrying the gateway's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from protocol.errors import RejectedByPeer, TransportError

DEVICE_PAGE = 1000  # GET /v1/devices answers at most this many per request


class AlreadyRegistered(RejectedByPeer):
    """The gateway already has a device with this name or public key (HTTP 409)."""


class UnknownDevice(RejectedByPeer):
    """The gateway has no device with this id (HTTP 404)."""


@dataclass(frozen=True)
class GatewayDevice:
    """One device as the gateway lists it."""

    name: str
    device_id: str
    public_key: str
    owner: str
    status: str
    rate_micro_per_hour: int
    current_key: str = ""  # after accepted key rotations (hex)


class GatewayAPI:
    """A client for the gateway's admin endpoints, authenticated with the bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"GatewayAPI({self.base_url!r})"  # never the token

    def list_devices(self) -> list[GatewayDevice]:
        """Return every registered device, a page at a time (``after``, ``limit``).

        Raises TransportError or RejectedByPeer.
        """
        found: list[GatewayDevice] = []
        after = ""
        while True:
            page = self._device_page(after)
            found += page
            if len(page) < DEVICE_PAGE:
                return found
            after = page[-1].name

    def _device_page(self, after: str) -> list[GatewayDevice]:
        body = self._call("GET", "/v1/devices", params={"after": after, "limit": DEVICE_PAGE})
        items = body.get("devices", body) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise TransportError(f"{self.base_url}: GET /v1/devices did not return a list")
        try:
            return [_device(item) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"{self.base_url}: unexpected device listing: {exc}") from None

    def register(self, *, name: str, public_key: bytes, owner: str,
                 rate_micro_per_hour: int, owner_keys: tuple[bytes, bytes] | None = None,
                 ) -> str:
        """Register a device; return its device id (hex).

        Raises AlreadyRegistered (409), RejectedByPeer (other refusals) or TransportError.
        """
        request: dict[str, object] = {
            "name": name, "public_key": public_key.hex(), "owner": owner,
            "rate_micro_per_hour": rate_micro_per_hour,
        }
        if owner_keys is not None:  # the owner's Ed25519 and X25519 keys, pinned
            request["owner_key"], request["owner_sealing_key"] = (k.hex() for k in owner_keys)
        body = self._call("POST", "/v1/devices", json=request)
        device_id = body.get("device_id") if isinstance(body, dict) else None
        if not isinstance(device_id, str):
            raise TransportError(f"{self.base_url}: registration answer has no device_id")
        return device_id

    def register_recipient(self, name: str, signing_key: bytes, sealing_key: bytes) -> None:
        """Register a data recipient's public keys, so the gateway logs its requests.

        Raises AlreadyRegistered (409), RejectedByPeer or TransportError.
        """
        self._call("POST", "/v1/recipients", json={
            "name": name, "signing_key": signing_key.hex(), "sealing_key": sealing_key.hex()})

    def revoke(self, device_id: str) -> None:
        """Revoke a device. Raises UnknownDevice, RejectedByPeer or TransportError."""
        self._call("POST", f"/v1/devices/{device_id}/revoke")

    def _call(self, method: str, path: str, json: dict[str, Any] | None = None,
              params: dict[str, str | int] | None = None) -> Any:
        url = self.base_url + path
        try:
            resp = self._session.request(
                method, url, json=json, params=params, timeout=self.timeout_s,
                headers={"Authorization": f"Bearer {self._token}"},
            )
        except requests.Timeout:
            raise TransportError(f"gateway at {self.base_url} did not answer within "
                                 f"{self.timeout_s:g} s") from None
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise TransportError(f"gateway unreachable at {self.base_url} ({reason})") from None
        if resp.status_code >= 400:
            raise _refusal(method, path, resp)
        try:
            return resp.json() if resp.content else {}
        except ValueError:
            raise TransportError(f"{method} {path}: gateway answered with non-JSON") from None


def _refusal(method: str, path: str, resp: requests.Response) -> Exception:
    detail = _detail(resp)
    suffix = f": {detail}" if detail else ""
    what = f"gateway refused {method} {path} (HTTP {resp.status_code}{suffix})"
    if resp.status_code == 409:
        return AlreadyRegistered(what)
    if resp.status_code == 404:
        return UnknownDevice(what)
    if resp.status_code in (401, 403):
        return RejectedByPeer(f"gateway refused the admin token (HTTP {resp.status_code}); "
                              "check the fleet's admin.token against the gateway's")
    if resp.status_code >= 500:
        return TransportError(what)
    return RejectedByPeer(what)


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200].strip()
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    return detail if isinstance(detail, str) else str(detail)[:200]


def _device(item: dict[str, Any]) -> GatewayDevice:
    return GatewayDevice(
        name=str(item["name"]), device_id=str(item["device_id"]),
        public_key=str(item.get("public_key", "")), owner=str(item.get("owner", "")),
        status=str(item.get("status", "")),
        rate_micro_per_hour=int(item.get("rate_micro_per_hour", 0)),
        current_key=str(item.get("current_key", "")),
    )
