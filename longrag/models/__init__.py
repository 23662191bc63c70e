"""The one place that knows where model files are and loads them."""
