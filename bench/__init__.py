"""The Plexus benchmark suite: ``python -m bench --help`` (as root). See ``bench/bench.py``."""
