"""Services: compose the retrieval and generation libraries into the product."""
