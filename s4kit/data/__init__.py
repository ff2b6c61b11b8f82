"""Datasets, split files, transforms and mixing."""
