"""Interactive layer of the workbench, imported as ``workbench.widgets``.

Thin views over the core objects in :mod:`workbench`: no maths lives here.
"""
from workbench.widgets.angles import AngleSelector
from workbench.widgets.designer import ScheduleDesigner
from workbench.widgets.fitter import CurveFitter
from workbench.widgets.live import LiveTraining
from workbench.widgets.sparsity import SparsityInspector

__all__ = ["ScheduleDesigner", "LiveTraining", "CurveFitter", "AngleSelector", "SparsityInspector"]
