"""Entry point of the frozen ``plexus-ipamd`` (packaging/plexus-ipamd.spec)."""

import sys

from ipamd.main import main

sys.exit(main())
