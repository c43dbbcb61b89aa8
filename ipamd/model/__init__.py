"""The API Plexus serves, as typed objects and pure rules: the Deckhouse kinds and Pods, the pod
annotations, names of the links Plexus makes, segment rules, conditions. No I/O, no third-party imports
but the ones parsing needs.
"""
