"""Entry point of the frozen ``plexusctl`` (packaging/plexus-ipamd.spec)."""

import sys

from ipamd.cli.ctl import main

sys.exit(main())
