"""Dispatch: carrying a task out of the weave and its outcome back.

``protocol`` (payloads, signatures) and ``spool`` (large files) are shared by both sides; ``receiver`` runs
in the weave process; ``worker`` runs on the remote side. Nothing here is imported by ``import wove``.
"""
