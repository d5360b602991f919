"""ragqa's service: retrieval and cited answers over the store, over HTTP."""
