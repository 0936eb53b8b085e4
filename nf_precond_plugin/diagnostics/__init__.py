"""Diagnostics that reproduce the paper's analysis figures (Fig. 2 and Fig. 4)."""
