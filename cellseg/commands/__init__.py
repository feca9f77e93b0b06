"""One module per `cellseg` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
