"""OS-facing helpers that several runtime packages need, each written once.

- ``osutil.sqlite``: open an SQLite file the same way everywhere (WAL, each database's
  own :class:`~osutil.sqlite.Pragmas`, an integrity check, moving a damaged file aside,
  explicit transactions);
- ``osutil.lockfile``: one process at a time per state or data directory;
- ``osutil.signals``: a signal's work done on a helper thread, never in the handler;
- ``osutil.sdnotify``: systemd readiness, status and watchdog notifications;
- ``osutil.toml_table``: reading a TOML config file with errors that name the key;
- ``osutil.brokerurl``: ``mqtt://`` and ``mqtts://`` URLs to host, port and TLS;
- ``osutil.jsonrpc``: the Ethereum JSON-RPC client (``requests``);
- ``osutil.mqtt``: the one paho-mqtt client wrapper, on its own or many on one hub.

Imports the standard library and :mod:`protocol` only, of ours (docs/ARCHITECTURE.md,
enforced by tests/test_import_rules.py); a module that needs a third-party library
(``requests``, ``paho``) is the only one that imports it, so ``import osutil.sdnotify``
pulls in neither.
"""
