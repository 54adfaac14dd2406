"""Figures (matplotlib, imported only here): `plots` draws PNGs, `images`
turns a model into the image arrays they show, `run_figures` is the loop hook
that draws a run's samples, reconstructions, learning curve and manifold.
Imports the layers below it; nothing below imports it.
"""
