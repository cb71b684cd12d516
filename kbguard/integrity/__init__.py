"""Integrity: verify the store against the manifest and the corpus, repair from the cache,
damage on purpose (chaos), export metrics."""
