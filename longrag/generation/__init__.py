"""Generation library: prompts and decoding loops (no web, queue or UI imports)."""
