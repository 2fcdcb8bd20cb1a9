"""fedsim: run FeatureCloud apps across isolated simulated sites."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Looked up on first use: importlib.metadata costs every agent (one per site, hundreds
    # in a large run) about 0.15 s of start-up, and the agent never asks for the version.
    if name != "__version__":
        raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsim-fc")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
