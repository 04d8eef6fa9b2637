"""Producer: read a corpus, chunk it, build and submit embedding tasks."""
