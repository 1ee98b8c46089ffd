"""Balanced PIONEER generative autoencoders (Heljakka et al.): library core.

The model, losses, schedule and sampling import only torch; Ray lives in
`pioneer.ray_train` (training) and `serve/` (HTTP).
"""

from pioneer.api import Pioneer

__all__ = ["Pioneer"]
