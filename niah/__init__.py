"""niah: token-exact needle-in-a-haystack checks for long-context llama-server launches."""

__version__ = "0.1.0"
