"""Interface drivers, one per attachment kind, behind one Protocol: plan, build with its undo steps, tear
down from the record, check.
"""
