"""Hand-written guides: for each model, a ``mean_field`` and an ``amortised`` guide (see ``guides/<model>.py``)."""
