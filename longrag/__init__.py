"""longrag: document QA for long documents with exact, offset-addressed evidence."""

__version__ = "0.1.0"
