"""``python -m ipamd``: the daemon, as the ``plexus-ipamd`` command runs it."""

from ipamd.main import run

run()
