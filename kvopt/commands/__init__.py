"""The subcommands of ``python -m kvopt``: report, dashboard, compare, profiles (``kvopt.cli.SUBCOMMANDS``)."""
