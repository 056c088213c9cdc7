"""workbench.integrations"""
