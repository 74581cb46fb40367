"""A handler module that takes $IPCPOOL_TEST_SLOW_IMPORT seconds (default 1.5) to import: slow-booting workers."""

import os
import time

time.sleep(float(os.environ.get("IPCPOOL_TEST_SLOW_IMPORT", "1.5")))

from recorder import record as handle  # noqa: E402,F401 - after the wait, on purpose
