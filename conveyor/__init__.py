"""conveyor: one artifact built once, promoted unchanged; every release recorded and reversible."""

__version__ = "0.1.0"
