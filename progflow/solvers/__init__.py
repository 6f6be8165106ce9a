"""ODE solvers: they see only a callable ``velocity(x, t)`` and a float64 time grid."""

from progflow.solvers.ode import euler

__all__ = ["euler"]
