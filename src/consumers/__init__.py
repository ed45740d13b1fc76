"""Stream processors: each folds the event log into one kind of derived state."""
