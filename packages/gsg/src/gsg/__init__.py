"""Guided stop-gradient (GSG) for SimSiam and BYOL."""
