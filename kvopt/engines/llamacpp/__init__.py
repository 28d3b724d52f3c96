"""The llama.cpp engine's primitives: GGUF metadata, build facts, timed sessions, export.

Nothing here imports llama_cpp at module import time except :mod:`.session`'s functions
when called; :func:`kvopt.engines.llamacpp.build.missing` says why it cannot be imported.
"""
