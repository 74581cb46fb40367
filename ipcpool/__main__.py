import sys

from ipcpool.cli import main

sys.exit(main())
