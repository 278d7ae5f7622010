"""The ``weft`` command line: one module per subcommand under :mod:`weft.cli.commands`."""
