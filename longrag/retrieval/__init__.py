"""Retrieval library: parsing, segmentation, chunking, embedding, indexes (no web/queue/UI)."""
