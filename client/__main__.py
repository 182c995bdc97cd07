"""``python -m client``: the same as the ``pruner`` command."""

import sys

from client.cli import main

sys.exit(main())
