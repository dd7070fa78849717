"""`python -m conceptseg.cli`: the same as the `conceptseg` command."""

import sys

from conceptseg.cli import main

sys.exit(main())
