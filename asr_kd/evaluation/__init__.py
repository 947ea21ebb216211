"""Trained systems, paired-bootstrap statistics, system comparisons and measured inference cost."""
