"""Where objects come from: the interface every source implements, and the local source (a directory of
manifests) with its writer.
"""
