import sys

from edge_daq.cli import main

sys.exit(main())
