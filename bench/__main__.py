"""`python -m bench [--quick]`: run the gateway benchmark."""

import sys

from bench.run import main

sys.exit(main())
