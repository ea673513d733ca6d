"""Datasets: readers of the third-party layouts, the synthetic generator, preparation."""
