"""``python -m ipamd.cli``: ``plexusctl``."""

import sys

from ipamd.cli.ctl import main

sys.exit(main())
