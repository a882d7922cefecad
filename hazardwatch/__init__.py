"""The application shell: command line, HTTP API and board, and the composition of the stages."""

__version__ = "0.1.0"
