"""Bridges to other training stacks (transformers ``Trainer``)."""
