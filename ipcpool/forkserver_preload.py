"""Preloaded into multiprocessing's forkserver (see ``ipcpool.pool.handle.mp_context``), and imported nowhere else.

Importing it names the forkserver in ``ps`` (``ipcpool: forkserver``) and
brings in the worker module, so each worker forks ready to run. A forkserver
started again later (the first one killed with its process group) ignores
SIGTTIN and SIGTTOU too: stopped by them, it would hold every spawn.
"""

import signal

from ipcpool.ops.proctitle import name_the_forkserver
from ipcpool.pool import worker  # noqa: F401 - preloaded so forked workers start warm

for _signum in (signal.SIGTTIN, signal.SIGTTOU):
    signal.signal(_signum, signal.SIG_IGN)
name_the_forkserver()
