"""``python -m ipamd``: the daemon, as the ``plexus-ipamd`` command runs it."""

import sys

from ipamd.main import main

sys.exit(main())
