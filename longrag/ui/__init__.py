"""The Streamlit document-QA app (``longrag ui``). It reaches the service only through the REST API."""
