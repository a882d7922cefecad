import sys

from hazardwatch.cli import main

sys.exit(main())
