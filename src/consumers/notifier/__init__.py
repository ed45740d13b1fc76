"""The notifier: signed webhook deliveries of applied events, with retries and dead letters."""
