"""Ensembles, their soft targets, distilled students and the 3%-of-the-data experiment (paper sections 2-6)."""
