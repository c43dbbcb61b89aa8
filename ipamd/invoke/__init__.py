"""Exec'ing CNI plugins, as a runtime does: one exec seam (environment, stdin, deadline, process-group
kill, result or CNI error) and the conflist runner on top of it.
"""
