"""workbench.sparsity"""
