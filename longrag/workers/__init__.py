"""Celery workers: thin task wrappers over ``longrag.services`` (see ``tasks.py``)."""
