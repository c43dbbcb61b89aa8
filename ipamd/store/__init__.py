"""The node's durable state: records, the narrow store interfaces each consumer uses, and their SQLite
implementation.
"""
