"""The subcommands of ``python -m kvopt``: report, dashboard, compare (``kvopt.cli.SUBCOMMANDS``)."""
