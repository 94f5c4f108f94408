"""`python -m parcae_lm ...` is `parcae ...`."""

import sys

from parcae_lm.cli import main

sys.exit(main())
