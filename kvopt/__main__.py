"""``python -m kvopt``: the command line (see :mod:`kvopt.cli`)."""

from kvopt.cli import main

# Guarded: trial processes are spawned, and spawn re-imports the main module.
if __name__ == "__main__":
    main()
