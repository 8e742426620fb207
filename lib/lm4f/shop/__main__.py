"""``python -m lm4f.shop [build-products|check|split]``: see :mod:`lm4f.shop`."""

import sys

from lm4f.shop import main

sys.exit(main())
