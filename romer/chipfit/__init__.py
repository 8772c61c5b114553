"""Fitting a noise preset to a user's own device measurements (`romer chip fit` / `romer chip report`).

Its own room, above ``romer.noise``: fitting reads measurement files, estimates curves and writes a preset file
that ``romer.noise`` loads like any other preset (``noise/measured.py``); the physics never imports the fitting.
"""
