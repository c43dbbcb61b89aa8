"""CNI spec versions Plexus speaks. Tiny on purpose: the exec'd shim imports it on every call."""

from cni.errors import IncompatibleVersion

CURRENT_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
#: Verbs that exist only from a given spec version on (SPEC.md "Version considerations").
VERB_MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise IncompatibleVersion(f"cniVersion {version!r} is not a version", "cniVersion") from None


def check_version(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(
            f"cniVersion {version!r} is not supported", f"supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    return version
