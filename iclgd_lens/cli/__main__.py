"""`python -m iclgd_lens.cli`."""

import sys

from iclgd_lens.cli import main

sys.exit(main())
