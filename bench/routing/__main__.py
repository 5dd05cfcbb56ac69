"""`python -m bench.routing [--quick] [--policies a,b] [--rates ...]`: run the routing benchmark."""

import sys

from bench.routing.run import main

sys.exit(main())
