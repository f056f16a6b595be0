import sys

from mobiforge.cli import main

sys.exit(main())
