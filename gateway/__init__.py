"""The edgeproof ledger gateway.

MQTT ingest (:mod:`gateway.ingest`), verification (:mod:`gateway.verify`), the Merkle log
store (:mod:`gateway.store`, :mod:`gateway.sqlite_store`), the single-writer sequencer
(:mod:`gateway.sequencer`), checkpoints and anchors (:mod:`gateway.checkpoints`,
:mod:`gateway.anchor`), the HTTP API (:mod:`gateway.api`), metrics (:mod:`gateway.metrics`)
and the ``edgeproof-gateway`` CLI (:mod:`gateway.cli`). Imports only :mod:`protocol`.
"""
