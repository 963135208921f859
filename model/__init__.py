"""The network, its layers, weights files, preprocessing and the Predictor.

Imports none of the other packages (app, index, training).
"""
