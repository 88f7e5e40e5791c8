"""procmond: the process-monitor collector of a DaemonEye-style monitoring stack."""

__version__ = "0.1.0"

__all__ = ["__version__"]
