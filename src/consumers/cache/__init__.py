"""The cache processor: refreshes each record's Redis entry once PostgreSQL has committed it."""
