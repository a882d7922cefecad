"""Judging readings and managing each alarm's life (ISA-18.2): a pure core and its store."""
