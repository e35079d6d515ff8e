"""The gateway's HTTP API (FastAPI): registry for admins, proofs and records for anyone.

The endpoint table lives in docs/ARCHITECTURE.md and docs/GATEWAY.md; the OpenAPI
description is generated from this module (``edgeproof-gateway openapi``) and kept in
docs/openapi.json, which a test compares with :func:`create_app`'s.

Admin endpoints need ``Authorization: Bearer <token>``; the token comes from a mode-0600
file and is compared in constant time (:func:`hmac.compare_digest`). There is no default
token. The token and the body size are checked by :class:`gateway.http_guard.RequestGuard`
before any body is read. Everything else is public and read-only. Bad parameters
(including integers past 2^63-1, the store's range) answer 400 with a one-line detail.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, params
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api_context import ApiContext
from gateway.config import HttpLimits
from gateway.dashboard import add_dashboard_routes
from gateway.documents_api import document_routes
from gateway.http_guard import BAD_BODY, BAD_PARAMETER, RequestGuard, token_matches
from gateway.metrics import CONTENT_TYPE
from gateway.payout_api import payout_routes
from gateway.store import (
    MAX_PAGE,
    MAX_STORED_INT,
    NO_CONTROL_CHARACTERS,
    Device,
    DeviceExists,
    DeviceNotFound,
    Leaf,
)
from protocol import cbor, merkle

API_VERSION = "1"
MAX_RATE_MICRO_PER_HOUR = 10**12
_HEX_ID = r"^[0-9a-f]{32}$"
MAX_INT = MAX_STORED_INT
_bearer = HTTPBearer(auto_error=False, description="the admin token")


class RegisterDevice(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="Ed25519 public key, hex")
    # No control characters: PostgreSQL text refuses NUL (a 500 before), and a log line or
    # a terminal showing an owner must not be driven by one.
    owner: str = Field(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
    rate_micro_per_hour: int = Field(ge=0, le=MAX_RATE_MICRO_PER_HOUR)
    owner_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                  description="the owner's Ed25519 public key, hex: only "
                                  "consents it signs reach the device")
    owner_sealing_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                          description="the owner's X25519 public key, hex")


class DeviceOut(BaseModel):
    name: str
    device_id: str
    public_key: str = Field(description="the enrolled key (hex)")
    current_key: str = Field(description="the key after accepted rotations (hex)")
    owner: str
    status: str
    rate_micro_per_hour: int
    settled_micro: int
    equivocated: bool
    registered_ms: int
    revoked_ms: int | None
    owner_key: str | None = None
    owner_sealing_key: str | None = None


class InclusionProof(BaseModel):
    index: int
    tree_size: int
    leaf_hash: str
    proof: list[str]


class ConsistencyProof(BaseModel):
    old_size: int
    new_size: int
    proof: list[str]


class LeafOut(BaseModel):
    index: int
    device_id: str
    seq: int
    stream: str
    received_ms: int
    clock_unsynced: bool
    record: str = Field(description="the exact signed record bytes (COSE_Sign1), hex")


class DeviceRecords(BaseModel):
    device_id: str
    records: list[LeafOut]


class DeviceKey(BaseModel):
    from_seq: int = Field(description="the first sequence number signed with this key")
    public_key: str = Field(description="Ed25519 public key, hex")


class DeviceKeys(BaseModel):
    device_id: str
    status: str
    keys: list[DeviceKey]
    owner_key: str | None = Field(default=None, description="the owner's Ed25519 key pinned "
                                  "at enrolment (hex), if any: only its consents apply")


class CheckpointOut(BaseModel):
    number: int
    size: int
    root_hash: str
    issued_ms: int
    note: str


class AnchorOut(BaseModel):
    backend: str = Field(description="the anchor backend, `ethereum`")
    chain_id: int
    tx_hash: str = Field(description="the anchoring transaction (0x hex)")
    block_number: int
    status: int = Field(description="receipt status: 1 = success")
    checkpoint_hash: str = Field(description="SHA-256 of the signed note (hex); the "
                                 "transaction input is `EPv1` (45 50 76 31) || this hash")
    size: int = Field(description="tree size of the anchored checkpoint")
    note: str = Field(description="the anchored checkpoint (signed note)")
    anchored_ms: int
    sender: str
    to: str
    data_prefix: str


class BalanceOut(BaseModel):
    owner: str
    balance_micro: int


class Balances(BaseModel):
    checkpoint_size: int | None = Field(description="tree size of the checkpoint covering "
                                        "`checkpointed`")
    checkpointed: list[BalanceOut]
    checkpointed_cbor: str = Field(description="the canonical table the checkpoint's "
                                   "`balances` line hashes (hex)")
    current: list[BalanceOut]


def _device_out(device: Device) -> DeviceOut:
    return DeviceOut(
        name=device.name, device_id=device.device_id.hex(), public_key=device.enrolled_key.hex(),
        current_key=device.current_key.hex(), owner=device.owner, status=device.status.value,
        rate_micro_per_hour=device.rate_micro_per_hour, settled_micro=device.settled_micro,
        equivocated=bool(device.flags & 1), registered_ms=device.registered_ms,
        revoked_ms=device.revoked_ms,
        owner_key=None if device.owner_key is None else device.owner_key.hex(),
        owner_sealing_key=None if device.owner_sealing_key is None
        else device.owner_sealing_key.hex())


def _leaf_out(leaf: Leaf) -> LeafOut:
    return LeafOut(index=leaf.index, device_id=leaf.device_id.hex(), seq=leaf.seq,
                   stream=leaf.stream, received_ms=leaf.received_ms,
                   clock_unsynced=bool(leaf.flags & 1), record=leaf.raw.hex())


def _decode_balances(data: bytes) -> list[BalanceOut]:
    table = cbor.decode(data, cbor.Limits(max_bytes=max(len(data), 1), max_items=1 << 20))
    assert isinstance(table, list)
    out = []
    for row in table:
        assert isinstance(row, list)
        assert isinstance(row[0], str)
        assert isinstance(row[1], int)
        out.append(BalanceOut(owner=row[0], balance_micro=row[1]))
    return out


def _parameter_errors(count: Callable[[str], None]
                      ) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The answer to a request FastAPI's validation refused, counted (``bad_parameter``,
    ``bad_body``): a bad path or query parameter is 400 with one line; a bad body keeps
    FastAPI's 422 (which names every field)."""
    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = [str(part) for part in first.get("loc", ())]
        if not where or where[0] not in ("path", "query"):
            count(BAD_BODY)
            return await request_validation_exception_handler(request, exc)
        count(BAD_PARAMETER)
        return JSONResponse({"detail": f"{where[0]} parameter {'.'.join(where[1:])}: "
                                       f"{first.get('msg', 'invalid')}"}, status_code=400)
    return refused


def _body_errors(count: Callable[[str], None]
                 ) -> Callable[[Request, Exception], Awaitable[Response]]:
    """FastAPI's own HTTP errors, answered as FastAPI does; a body it could not parse at
    all (FastAPI answers 400 for any exception json raises: RecursionError for JSON nested
    deeper than the interpreter's limit, say) is counted ``bad_body`` and says why."""
    async def answered(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.__cause__ is not None \
                and exc.detail == "There was an error parsing the body":
            count(BAD_BODY)
            why = ("JSON nested too deep" if isinstance(exc.__cause__, RecursionError)
                   else "not a JSON document")
            return JSONResponse({"detail": f"request body: {why}"}, status_code=400)
        return await http_exception_handler(request, exc)
    return answered


def create_app(ctx: ApiContext, limits: HttpLimits | None = None) -> FastAPI:
    """Return the FastAPI application serving ``ctx``, guarded by ``limits``.

    ``/docs`` and ``/redoc`` are off: the API is for programs, the description is
    ``/openapi.json`` (and docs/openapi.json), and Swagger UI would make browsers load
    scripts from a CDN (docs/GATEWAY.md, "HTTP API").
    """
    limits = limits or HttpLimits()
    app = FastAPI(title="edgeproof gateway", version=API_VERSION,
                  description="Registry, Merkle log proofs, records, checkpoints and metrics "
                              "of an edgeproof ledger gateway.",
                  docs_url=None, redoc_url=None)

    def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        # RequestGuard has already refused a wrong token; this declares the scheme in the
        # OpenAPI description and stays as a second check.
        given = credentials.credentials.encode("utf-8") if credentials else b""
        if not token_matches(given, ctx.admin_token.value):
            raise HTTPException(401, "admin token required",
                                headers={"WWW-Authenticate": "Bearer"})

    admin = [Depends(require_admin)]
    _admin_routes(app, ctx, admin)
    _log_routes(app, ctx)
    document_routes(app, ctx.store, ctx.desk, admin, ctx.wall_ms)
    _service_routes(app, ctx)
    payout_routes(app, ctx.payout, ctx.wall_ms)
    add_dashboard_routes(app, ctx)
    app.add_exception_handler(RequestValidationError,
                              _parameter_errors(ctx.metrics.http_rejected))
    # Starlette's class: FastAPI raises it for a body it cannot parse (its own subclass for
    # the routes' errors), and a handler of the subclass would miss it.
    app.add_exception_handler(StarletteHTTPException, _body_errors(ctx.metrics.http_rejected))
    app.add_middleware(
        RequestGuard, admin_token=ctx.admin_token.value,
        admin_routes=[r for r in app.routes if isinstance(r, APIRoute) and "admin" in r.tags],
        max_body_bytes=limits.max_body_bytes,
        on_reject=ctx.metrics.http_rejected)
    return app


def _admin_routes(app: FastAPI, ctx: ApiContext, admin: list[params.Depends]) -> None:
    @app.post("/v1/devices", status_code=201, response_model=DeviceOut, dependencies=admin,
              tags=["admin"], summary="Register a device")
    def register(body: RegisterDevice) -> DeviceOut:
        try:
            if (body.owner_key is None) != (body.owner_sealing_key is None):
                raise HTTPException(422, "owner_key and owner_sealing_key come together")
            device = ctx.store.register_device(
                body.name, bytes.fromhex(body.public_key), body.owner,
                body.rate_micro_per_hour, ctx.wall_ms(),
                owner_key=None if body.owner_key is None else bytes.fromhex(body.owner_key),
                owner_sealing_key=None if body.owner_sealing_key is None
                else bytes.fromhex(body.owner_sealing_key))
        except DeviceExists as exc:
            raise HTTPException(409, str(exc)) from None
        return _device_out(device)

    @app.get("/v1/devices", response_model=list[DeviceOut], dependencies=admin,
             tags=["admin"], summary="List devices by name, a page at a time",
             description="Devices whose name sorts after `after` (by bytes), at most "
             "`limit`; the next page starts after the last name returned. A page shorter "
             "than `limit` is the last.")
    def list_devices(after: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")] = "",
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
                     ) -> list[DeviceOut]:
        return [_device_out(d) for d in ctx.store.devices(after, limit)]

    @app.post("/v1/devices/{device_id}/revoke", response_model=DeviceOut, dependencies=admin,
              tags=["admin"], summary="Revoke a device (its next record is rejected)")
    def revoke(device_id: Annotated[str, Path(pattern=_HEX_ID)]) -> DeviceOut:
        try:
            return _device_out(ctx.store.revoke_device(bytes.fromhex(device_id), ctx.wall_ms()))
        except DeviceNotFound as exc:
            raise HTTPException(404, str(exc)) from None


def _log_routes(app: FastAPI, ctx: ApiContext) -> None:
    store = ctx.store

    @app.get("/v1/checkpoint", response_class=PlainTextResponse, tags=["log"],
             summary="The latest signed checkpoint (C2SP signed note)")
    def checkpoint() -> str:
        latest = store.latest_checkpoint()
        if latest is None:
            raise HTTPException(503, "no checkpoint yet")
        return latest.note

    @app.get("/v1/checkpoints", response_model=list[CheckpointOut], tags=["log"],
             summary="Checkpoints in issue order (the local anchor chain)")
    def checkpoints(after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[CheckpointOut]:
        return [CheckpointOut(number=c.number, size=c.size, root_hash=c.root_hash.hex(),
                              issued_ms=c.issued_ms, note=c.note)
                for c in store.checkpoints(after, limit)]

    @app.get("/v1/anchors", response_model=AnchorOut, tags=["log"],
             summary="Where a checkpoint was anchored on a chain (latest, or covering size)",
             responses={404: {"description": "no such anchor (or the anchor is local)"}})
    def anchors(size: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None) -> AnchorOut:
        found = ctx.anchor_lookup(size)
        if found is None:
            raise HTTPException(404, "no chain anchor" + (f" covering size {size}" if size
                                                          else "") + " yet")
        return AnchorOut.model_validate(found)

    @app.get("/v1/anchors/list", response_model=list[AnchorOut], tags=["log"],
             summary="Every chain anchor, smallest tree size first, a page at a time",
             description="Anchors of checkpoints with tree size greater than `after_size`, "
             "at most `limit`; the next page starts after the last size returned. An empty "
             "list means no more (yet).",
             responses={404: {"description": "the anchor is local (see /v1/checkpoints)"}})
    def anchors_list(after_size: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AnchorOut]:
        found = ctx.anchor_listing(after_size, limit)
        if found is None:
            raise HTTPException(404, "no chain anchors: the anchor is local "
                                "(see /v1/checkpoints)")
        return [AnchorOut.model_validate(a) for a in found]

    @app.get("/v1/proofs/inclusion", response_model=InclusionProof, tags=["log"],
             summary="Inclusion proof of a leaf in a tree size (RFC 9162 §2.1.3)")
    def inclusion(index: Annotated[int, Query(ge=0, le=MAX_INT)],
                  tree_size: Annotated[int, Query(ge=1, le=MAX_INT)]) -> InclusionProof:
        if index >= tree_size or tree_size > store.size():
            raise HTTPException(400, "need 0 <= index < tree_size <= log size")
        proof = merkle.inclusion_proof_from_nodes(store, index, tree_size)
        return InclusionProof(index=index, tree_size=tree_size,
                              leaf_hash=store.get_node(0, index).hex(),
                              proof=[h.hex() for h in proof])

    @app.get("/v1/proofs/consistency", response_model=ConsistencyProof, tags=["log"],
             summary="Consistency proof between two tree sizes (RFC 9162 §2.1.4)")
    def consistency(old_size: Annotated[int, Query(ge=1, le=MAX_INT)],
                    new_size: Annotated[int, Query(ge=1, le=MAX_INT)]) -> ConsistencyProof:
        if old_size > new_size or new_size > store.size():
            raise HTTPException(400, "need 1 <= old_size <= new_size <= log size")
        proof = merkle.consistency_proof_from_nodes(store, old_size, new_size)
        return ConsistencyProof(old_size=old_size, new_size=new_size,
                                proof=[h.hex() for h in proof])

    @app.get("/v1/leaves", response_model=list[LeafOut], tags=["log"],
             summary="Consecutive leaves from ``start``: records and documents, as stored")
    def leaves(start: Annotated[int, Query(ge=0, le=MAX_INT)],
               limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> list[LeafOut]:
        end = min(start + limit, MAX_INT)  # a start near the top must not overflow SQL
        return [_leaf_out(x) for x in store.stream_leaves(None, start, end, limit)]

    @app.get("/v1/leaves/{index}", response_model=LeafOut, tags=["log"],
             summary="A logged record (or signed document) by leaf index")
    def leaf(index: Annotated[int, Path(ge=0, le=MAX_INT)]) -> LeafOut:
        found = store.leaf(index)
        if found is None:
            raise HTTPException(404, f"no leaf {index}")
        return _leaf_out(found)

    @app.get("/v1/devices/{device_id}/records", response_model=DeviceRecords, tags=["log"],
             summary="A device's logged records in sequence order (ciphertext stays sealed)")
    def device_records(device_id: Annotated[str, Path(pattern=_HEX_ID)],
                       after_seq: Annotated[int, Query(ge=-1, le=MAX_INT)] = -1,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DeviceRecords:
        leaves = store.device_records(bytes.fromhex(device_id), after_seq, limit)
        return DeviceRecords(device_id=device_id, records=[_leaf_out(x) for x in leaves])

    @app.get("/v1/devices/{device_id}/keys", response_model=DeviceKeys, tags=["log"],
             summary="A device's public keys: the enrolled one and each accepted rotation")
    def device_keys(device_id: Annotated[str, Path(pattern=_HEX_ID)]) -> DeviceKeys:
        # Public keys are not secrets: verifiers and recipients need them to check
        # signatures. The first key is self-certifying (the device id is derived from it).
        device = store.device(bytes.fromhex(device_id))
        if device is None:
            raise HTTPException(404, f"no device {device_id}")
        return DeviceKeys(device_id=device_id, status=device.status.value,
                          keys=[DeviceKey(from_seq=k.from_seq, public_key=k.public_key.hex())
                                for k in device.keys],
                          owner_key=device.owner_key.hex() if device.owner_key else None)

    @app.get("/v1/balances", response_model=Balances, tags=["log"],
             summary="Settled credit per owner: as of the latest checkpoint, and now")
    def balances() -> Balances:
        latest = store.latest_checkpoint()
        current = [BalanceOut(owner=b.owner, balance_micro=b.balance_micro)
                   for b in store.balances()]
        if latest is None:
            return Balances(checkpoint_size=None, checkpointed=[], checkpointed_cbor="",
                            current=current)
        return Balances(checkpoint_size=latest.size,
                        checkpointed=_decode_balances(latest.balances),
                        checkpointed_cbor=latest.balances.hex(), current=current)


def _service_routes(app: FastAPI, ctx: ApiContext) -> None:
    @app.get("/v1/verifier-key", response_class=PlainTextResponse, tags=["log"],
             summary="The gateway's verifier key (C2SP signed-note verifier text)")
    def verifier_key() -> str:
        return ctx.verifier_key

    @app.get("/v1/stats", tags=["service"], summary="Counters as JSON")
    def stats() -> dict[str, object]:
        latest = ctx.store.latest_checkpoint()
        return {"log_size": ctx.store.size(),
                "checkpoint_size": latest.size if latest else None,
                **ctx.store.counts(), **ctx.metrics.snapshot()}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"],
             summary="Prometheus text format")
    def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/healthz", tags=["service"], summary="Liveness and MQTT connection state")
    def healthz(response: Response) -> dict[str, object]:
        health = ctx.health()
        if not health.get("ok"):
            response.status_code = 503
        return health
