"""Plexus CNI side: the exec'd shim (standard library only) and the attachment builders the daemon uses."""
