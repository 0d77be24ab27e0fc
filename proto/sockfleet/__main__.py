"""``python -m sockfleet``: the ``sockfleet`` command (its dispatcher is ``sockfleet.agent.main``)."""

import sys

from sockfleet.agent.main import main

sys.exit(main())
