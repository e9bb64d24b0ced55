"""`python -m easel` is the `easel` command."""

import sys

from easel.cli.main import main

sys.exit(main())
