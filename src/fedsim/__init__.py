"""fedsim: run FeatureCloud apps across isolated simulated sites."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedsim-fc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
