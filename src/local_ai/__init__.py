"""local-ai: declarative offline AI coding on Apple Silicon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("local-ai")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
