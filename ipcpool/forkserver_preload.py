"""Preloaded into multiprocessing's forkserver (see ``ipcpool.pool.handle.mp_context``), and imported nowhere else.

Importing it names the forkserver in ``ps`` (``ipcpool: forkserver``) and
brings in the worker module, so each worker forks ready to run.
"""

from ipcpool.ops.proctitle import name_the_forkserver
from ipcpool.pool import worker  # noqa: F401 - preloaded so forked workers start warm

name_the_forkserver()
