"""The write side: the ingest gateway's routes, record commands and the publisher."""
