"""Hydra structured configs: one typed tree for a whole experiment (see :mod:`asr_kd.conf.schema`)."""
