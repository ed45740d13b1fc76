"""The event archiver: every event of the log in ordered, gzip-compressed S3 segments."""
