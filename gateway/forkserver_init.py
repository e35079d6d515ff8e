"""Imported by the verify pool's forkserver process only: it dies with the gateway.

The forkserver would otherwise outlive a gateway killed with SIGKILL: it exits when every
copy of its "alive" pipe's write end is closed, and the workers it forked hold one (as
they hold the resource tracker's pipe), while each worker waits for work for ever. So the
forkserver asks the kernel for SIGKILL when the gateway exits; its workers ask for the
same when the forkserver exits (``gateway.verify_pool._init_worker``), and the resource
tracker then sees its pipe close and exits too. Nothing else may import this module: it
ties the importing process's life to its parent's.
"""

from __future__ import annotations

import signal

from osutil.deathsig import die_with_parent

die_with_parent(signal.SIGKILL)
