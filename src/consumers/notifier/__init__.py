"""The notifier: signed webhook deliveries of applied events, retried until delivered or
exhausted (an operator redrives exhausted deliveries)."""
