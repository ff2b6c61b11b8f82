"""Methods: one file per method, registered by name (see ``base.py`` for the interface)."""
from .base import Method, MethodOptions, build_method, method_class, method_options, register, registered
from . import supervised, meanteacher, reco, css, prcl, rc2l, allspark  # noqa: F401  (registration)

__all__ = ["Method", "MethodOptions", "build_method", "method_class", "method_options", "register", "registered"]
