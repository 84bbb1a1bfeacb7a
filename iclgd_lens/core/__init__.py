"""The pipeline: episodes, recording, deltas and their training, metrics and scoring, `compare`, results.

It imports the sources below it, never the analyses, views or command line above it.
"""
