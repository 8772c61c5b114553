"""The `romer` command line: one module per command group, assembled by :mod:`romer.cli.main`.

Only this package imports the rooms below it (models, noise, routing, calibrate, data, eval, experiment,
report, chipfit); none of them imports the CLI.
"""
