"""Studies: questions answered over many chips, each a measurement plus the analysis of its rows — the regime map
(from results stores), the routing study, noise sensitivity, the zoo cards' clean baseline and the per-layer
router-noise account. Only the CLI and scripts import this room; their tables are formatted in ``romer.report``."""
