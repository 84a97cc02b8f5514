import sys

from batchscale.cli import main

sys.exit(main())
