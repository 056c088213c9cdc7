"""Core library of the workbench (no UI imports)."""
__version__ = "0.1.0"
