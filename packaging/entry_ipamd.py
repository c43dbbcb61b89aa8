"""Entry point of the frozen ``plexus-ipamd`` (packaging/plexus-ipamd.spec)."""

from ipamd.main import run

run()
