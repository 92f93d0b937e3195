"""`pgoctl report`: what the profile holds and what optimizing did, read from the state folder.

command (the command line), collect (reads the state and runs llvm-profdata), figures (the
numbers), tool (running and parsing llvm-profdata), markdown, charts and folder (the report's
files).

May import: the shared modules only (no daemon code, no pyelftools: tests/test_layers.py).
"""
