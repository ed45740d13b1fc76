"""Blue-green rebuilds of tenant projections from the log (``eventfold replay`` / ``verify``)."""
