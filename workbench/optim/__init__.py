"""workbench.optim"""
