"""Entry point of the exec'd ``plexus`` binary (frozen by PyInstaller)."""

from cni.shim import run

if __name__ == "__main__":
    run()
