"""Bulk colorization of scanned black-and-white archive photographs."""

__version__ = "0.1.0"
