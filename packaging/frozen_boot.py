"""The frozen plugin's Python bootstrap, in place of PyInstaller's ``pyiboot01_bootstrap`` (packaging/plexus.spec).

PyInstaller's bootstrap imports ``os`` (``_collections_abc`` with it: ~1.2 ms), its PYZ archive reader and importer
(``pyimod01_archive``, ``pyimod02_importers``: ``zlib``, ``struct``, ``zipimport``), its ctypes hooks (a failed
``import ctypes``), and stats every entry of ``_internal/`` looking for eggs: ~2 ms of a ~10 ms exec, paid on every
CNI call, for machinery the plugin does not use. The plugin is built with ``noarchive=True``: its modules are plain
``.pyc`` files that Python's own path finder loads from ``sys._MEIPASS`` (on ``sys.path``), so no PYZ importer is
needed, and it bundles no ctypes and no eggs. What is left is what other code may test for.
"""

import sys

sys.frozen = True  # type: ignore[attr-defined]  # "running frozen", as PyInstaller's bootstrap says it
# The bootloader names the (empty) PYZ archive for an importer this bootstrap does not install.
sys.__dict__.pop("_pyinstaller_pyz", None)
