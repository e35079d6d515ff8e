"""HTTP routes for signed documents and recipients (docs/GATEWAY.md, "Documents").

- ``POST /v1/documents``: anyone submits the exact COSE_Sign1 bytes of a request, consent or
  revocation; the signature is the credential (:mod:`gateway.contracts` decides). 201 with
  the leaf index, 200 if those bytes are already logged, 400 with a reason code otherwise.
- ``GET /v1/documents``, ``GET /v1/documents/{id}``: public, paged, exact bytes in hex.
- ``GET /v1/devices/{id}/documents``: the consents, revocations and quality attestations
  concerning a device.
- ``GET /v1/owners/{owner_key}/devices``: the devices pinned to an owner key, by name, a page
  at a time (``after``, ``limit``).
- ``POST /v1/recipients`` (admin), ``GET /v1/recipients/list``: who may submit requests
  (the listing has its own path: the admin guard matches paths, not methods).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, params
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gateway.contracts import DocumentDesk, DocumentRefused
from gateway.store import (
    MAX_PAGE,
    MAX_STORED_INT,
    LogStore,
    RecipientEntry,
    RecipientExists,
    StoredDocument,
)
from protocol.errors import StorageError
from protocol.keys import signer_id

_HEX_32 = r"^[0-9a-f]{64}$"
_HEX_ID = r"^[0-9a-f]{32}$"
# A device name (the alphabet a device is registered with), or "" for the first page: no
# NUL or other control character reaches SQL (PostgreSQL text refuses NUL).
_NAME_CURSOR = r"^[A-Za-z0-9._-]*$"
MAX_INT = MAX_STORED_INT
DOCUMENT_TYPES = ("request", "consent", "revocation", "quality")


class DocumentOut(BaseModel):
    index: int = Field(description="leaf index in the log")
    id: str = Field(description="document id: SHA-256 of the signed bytes (hex)")
    type: str
    signer: str = Field(description="the signer's Ed25519 public key (hex)")
    signer_id: str
    ref: str | None = Field(description="the request a consent names, or the consent a "
                            "revocation names (hex id)")
    counter: int = Field(description="a revocation's counter (0 otherwise)")
    received_ms: int
    document: str = Field(description="the exact signed bytes (COSE_Sign1), hex")


class Submitted(BaseModel):
    index: int
    id: str
    type: str
    duplicate: bool = Field(description="these bytes were already logged")


class RegisterRecipient(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    signing_key: str = Field(pattern=_HEX_32, description="Ed25519 public key, hex")
    sealing_key: str = Field(pattern=_HEX_32, description="X25519 public key, hex")


class RecipientOut(BaseModel):
    name: str
    signing_key: str
    signer_id: str
    sealing_key: str
    registered_ms: int


class OwnedDevice(BaseModel):
    device_id: str
    name: str
    status: str


def document_out(d: StoredDocument) -> DocumentOut:
    return DocumentOut(index=d.index, id=d.doc_id.hex(), type=d.type, signer=d.signer.hex(),
                       signer_id=signer_id(d.signer).hex(),
                       ref=None if d.ref is None else d.ref.hex(), counter=d.counter,
                       received_ms=d.received_ms, document=d.raw.hex())


def _recipient_out(r: RecipientEntry) -> RecipientOut:
    return RecipientOut(name=r.name, signing_key=r.signing_key.hex(),
                        signer_id=signer_id(r.signing_key).hex(),
                        sealing_key=r.sealing_key.hex(), registered_ms=r.registered_ms)


_COSE_BODY = {"requestBody": {"required": True, "content": {
    "application/cose": {"schema": {"type": "string", "format": "binary"}}}}}


def document_routes(app: FastAPI, store: LogStore, desk: DocumentDesk | None,
                    admin: list[params.Depends], wall_ms: Callable[[], int]) -> None:
    """Add the document and recipient routes to ``app``."""

    @app.post("/v1/documents", status_code=201, response_model=Submitted, tags=["documents"],
              summary="Submit a signed request, consent or revocation (COSE_Sign1 bytes)",
              openapi_extra=_COSE_BODY,
              responses={200: {"description": "already logged"},
                         400: {"description": "refused; `reason` holds the reason code"}})
    async def submit(request: Request) -> Response:
        if desk is None:
            raise HTTPException(503, "documents are not accepted by this gateway")
        raw = await request.body()
        try:
            logged = await run_in_threadpool(desk.submit, raw)
        except DocumentRefused as exc:
            return JSONResponse({"detail": str(exc), "reason": exc.reason.value},
                                status_code=400)
        except StorageError as exc:
            raise HTTPException(503, f"store unavailable: {exc}") from None
        doc = logged.document
        body = Submitted(index=doc.index, id=doc.doc_id.hex(), type=doc.type,
                         duplicate=logged.duplicate)
        return JSONResponse(body.model_dump(), status_code=200 if logged.duplicate else 201)

    @app.get("/v1/documents", response_model=list[DocumentOut], tags=["documents"],
             summary="Logged documents in log order, a page at a time")
    def documents(type: Annotated[str | None, Query(
                  pattern="^(request|consent|revocation|quality|lapse)$")] = None,
                  after: Annotated[int, Query(ge=-1, le=MAX_INT)] = -1,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DocumentOut]:
        return [document_out(d) for d in store.documents(type, after, limit)]

    @app.get("/v1/documents/{doc_id}", response_model=DocumentOut, tags=["documents"],
             summary="One logged document by id")
    def document(doc_id: Annotated[str, Path(pattern=_HEX_32)]) -> DocumentOut:
        found = store.document(bytes.fromhex(doc_id))
        if found is None:
            raise HTTPException(404, f"no document {doc_id}")
        return document_out(found)

    @app.get("/v1/devices/{device_id}/documents", response_model=list[DocumentOut],
             tags=["documents"],
             summary="Consents, revocations, quality attestations and lapse notices "
             "concerning a device")
    def device_documents(device_id: Annotated[str, Path(pattern=_HEX_ID)],
                         from_index: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         ) -> list[DocumentOut]:
        found = store.device_documents(bytes.fromhex(device_id), from_index, limit)
        return [document_out(d) for d in found]

    @app.get("/v1/owners/{owner_key}/devices", response_model=list[OwnedDevice],
             tags=["documents"], summary="The devices pinned to an owner's Ed25519 key, "
             "a page at a time",
             description="Devices pinned to `owner_key` whose name sorts after `after` (by "
             "bytes), at most `limit`; the next page starts after the last name returned. A "
             "page shorter than `limit` is the last.")
    def owner_devices(owner_key: Annotated[str, Path(pattern=_HEX_32)],
                      after: Annotated[str, Query(max_length=64, pattern=_NAME_CURSOR)] = "",
                      limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
                      ) -> list[OwnedDevice]:
        # One index range of that owner's devices (LogStore.owner_devices), never the
        # registry: the route is public. The default page is the cap, so a client that
        # does not page still gets every device of an owner with up to MAX_PAGE of them.
        found = store.owner_devices(bytes.fromhex(owner_key), after, limit)
        return [OwnedDevice(device_id=d.device_id.hex(), name=d.name, status=d.status.value)
                for d in found]

    @app.post("/v1/recipients", status_code=201, response_model=RecipientOut,
              dependencies=admin, tags=["admin"], summary="Register a data recipient")
    def register_recipient(body: RegisterRecipient) -> RecipientOut:
        try:
            entry = store.register_recipient(body.name, bytes.fromhex(body.signing_key),
                                             bytes.fromhex(body.sealing_key), wall_ms())
        except RecipientExists as exc:
            raise HTTPException(409, str(exc)) from None
        return _recipient_out(entry)

    @app.get("/v1/recipients/list", response_model=list[RecipientOut], tags=["documents"],
             summary="Registered data recipients (public keys)")
    def recipients() -> list[RecipientOut]:
        return [_recipient_out(r) for r in store.recipients()]
