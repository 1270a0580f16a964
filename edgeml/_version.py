"""The edgeml version, in a leaf module: the compiler and the agent read it without importing ``edgeml``
itself (which would make ``edgeml`` and its own subpackages import each other)."""

__version__ = "0.1.0"
