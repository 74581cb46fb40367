"""Preloaded into multiprocessing's forkserver (see ``pool.mp_context``), and imported nowhere else.

Importing it names the forkserver in ``ps`` (``ipcpool: forkserver``) and
brings in the worker module, so each worker forks ready to run.
"""

from ipcpool import worker  # noqa: F401 - preloaded so forked workers start warm
from ipcpool.ops.proctitle import name_the_forkserver

name_the_forkserver()
