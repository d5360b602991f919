"""ragqa's indexer: load documents, chunk them, embed them and publish a versioned store."""
