"""OS-facing helpers that several runtime packages need, each written once.

``osutil.sqlite`` opens an SQLite file the same way everywhere (WAL, ``synchronous=FULL``,
an integrity check, moving a damaged file aside, explicit transactions); ``osutil.lockfile``
makes sure one process at a time uses a state or data directory. Imports the standard
library and :mod:`protocol` only (docs/ARCHITECTURE.md).
"""
