"""The multi-task methods (being moved here one file per method; see the next commit)."""
