"""One delivery channel per file, behind the small ``Channel`` protocol of ``base``."""
